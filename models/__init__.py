"""Model registry, explainer-safe ResNets, safety checks and training.

``MODELS`` maps a name to a factory ``fn(*, in_channels=1, num_classes=2, image_size=28)``.
"""
from models.registry import MODELS, build_model, register_model  # noqa: F401
from models import resnet as _resnet, tiny as _tiny  # noqa: F401  (registration side effects)

try:  # the safety tools live in their own module
    from models.safety import check_explainer_safe, make_explainer_safe, SafetyReport  # noqa: F401
except ImportError:  # pragma: no cover - during bootstrap only
    pass
