"""Model registry, explainer-safe ResNets, safety checks and training.

``MODELS`` maps a name to a factory ``fn(*, in_channels=1, num_classes=2, image_size=28)``.
A new architecture is one module here (imported below) or a plug-in package registering through
the ``bench.models`` entry-point group.
"""

from models.registry import MODELS, build_model, register_model  # noqa: F401
from models import resnet as _resnet, tiny as _tiny  # noqa: F401  (registration side effects)
from models.safety import (  # noqa: F401
    SafetyReport,
    check_explainer_safe,
    convert_explainer_safe,
    hook_failure,
    make_explainer_safe,
)
