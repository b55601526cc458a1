"""A tiny explainer-safe CNN for fast tests (a residual block included, so it exercises the
same code paths as the ResNets at a fraction of the cost)."""

from __future__ import annotations

from torch import Tensor, nn

from models.registry import register_model


class TinyResCNN(nn.Module):
    """conv-bn-relu stem, one residual basic block, global average pool, linear head."""

    def __init__(self, *, in_channels: int = 1, num_classes: int = 2, width: int = 8) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU()
        self.layer1 = nn.Sequential(_TinyBlock(width))
        self.layer2 = nn.Sequential(
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(),
        )
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.layer2(self.layer1(self.relu(self.bn1(self.conv1(x)))))
        return self.fc(self.flatten(self.avgpool(x)))


class _TinyBlock(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.relu2 = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(out + x)


@register_model("tiny", family="test")
def tiny(*, in_channels: int = 1, num_classes: int = 2, image_size: int = 28) -> TinyResCNN:
    """Tiny residual CNN (~3k parameters) for unit tests; any image size."""
    return TinyResCNN(in_channels=in_channels, num_classes=num_classes)
