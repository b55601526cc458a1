"""Explainer-safe ResNets (He et al. 2016, "Deep Residual Learning for Image Recognition").

Same architecture as torchvision's ResNet-18/50/101 with three changes that make SHAP's
DeepExplainer (and Captum's DeepLift) exact, measured in ../shared/FIELD-NOTES.md:

* every activation call site has its own ``nn.ReLU`` module (shap stores each hooked module's
  input/output once per forward, so a ReLU reused inside a block corrupts the attribution);
* no in-place operation anywhere (``ReLU(inplace=False)``, ``out = out + identity``), which
  otherwise crashes with "Output 0 of BackwardHookFunction is a view and is being modified inplace";
* the stem depends on the input size: at 28 px a 3x3 stride-1 convolution and no max-pool
  (MedMNIST's "ResNet (28)"); at >= 64 px torchvision's 7x7/2 convolution followed by a
  *non-overlapping* 2x2 max-pool (the overlapping 3x3/2 pool breaks additivity by 0.78 logits).
"""

from __future__ import annotations

from torch import Tensor, nn

from models.registry import register_model

SMALL_STEM_MAX = 63  # images up to this size get the 28 px stem


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


def _conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = _conv3x3(cin, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.relu2 = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = _conv1x1(cin, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = _conv3x3(planes, planes, stride)  # stride on the 3x3, as torchvision (ResNet v1.5)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU()
        self.conv3 = _conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.downsample = downsample
        self.relu3 = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu3(out + identity)


class ResNet(nn.Module):
    """ResNet with a size-dependent stem; input ``(B, in_channels, H, W)``, output logits ``(B, K)``."""

    def __init__(
        self,
        block: type[BasicBlock | Bottleneck],
        layers: list[int],
        *,
        in_channels: int = 1,
        num_classes: int = 2,
        image_size: int = 28,
        width: int = 64,
    ) -> None:
        super().__init__()
        self.image_size = image_size
        if image_size <= SMALL_STEM_MAX:
            self.conv1 = nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False)
            self.maxpool: nn.Module = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(in_channels, width, 7, stride=2, padding=3, bias=False)
            self.maxpool = nn.MaxPool2d(kernel_size=2, stride=2)  # non-overlapping: DeepExplainer-exact
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU()
        self.inplanes = width
        self.layer1 = self._make_layer(block, width, layers[0])
        self.layer2 = self._make_layer(block, width * 2, layers[1], stride=2)
        self.layer3 = self._make_layer(block, width * 4, layers[2], stride=2)
        self.layer4 = self._make_layer(block, width * 8, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.fc = nn.Linear(width * 8 * block.expansion, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _make_layer(self, block, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                _conv1x1(self.inplanes, planes * block.expansion, stride),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.flatten(self.avgpool(x)))


@register_model("resnet18", family="resnet", blocks="basic")
def resnet18(*, in_channels: int = 1, num_classes: int = 2, image_size: int = 28) -> ResNet:
    """ResNet-18 (basic blocks [2, 2, 2, 2])."""
    return ResNet(BasicBlock, [2, 2, 2, 2], in_channels=in_channels, num_classes=num_classes, image_size=image_size)


@register_model("resnet50", family="resnet", blocks="bottleneck")
def resnet50(*, in_channels: int = 1, num_classes: int = 2, image_size: int = 28) -> ResNet:
    """ResNet-50 (bottleneck blocks [3, 4, 6, 3])."""
    return ResNet(Bottleneck, [3, 4, 6, 3], in_channels=in_channels, num_classes=num_classes, image_size=image_size)


@register_model("resnet101", family="resnet", blocks="bottleneck")
def resnet101(*, in_channels: int = 1, num_classes: int = 2, image_size: int = 28) -> ResNet:
    """ResNet-101 (bottleneck blocks [3, 4, 23, 3])."""
    return ResNet(Bottleneck, [3, 4, 23, 3], in_channels=in_channels, num_classes=num_classes, image_size=image_size)
