"""Explainer registry and adapters (one file per library family).

Importing this package registers every in-repo adapter; third-party adapters arrive through the
``bench.explainers`` entry-point group on the first registry lookup. Adding an in-repo adapter is
one file here plus one import line below (docs/adding-an-explainer.md).
"""

from explainers.base import (  # noqa: F401
    EXPLAINERS,
    CAM_LAYER,
    OUTPUT_SPACES,
    Attribution,
    completeness_gap,
    explainer_params,
    get_explainer,
    list_explainers,
    model_guard,
    register_explainer,
    relative_completeness_gap,
    run_explainer,
    with_output_space,
)
from explainers import cam_adapters, captum_adapters, controls, shap_adapters  # noqa: F401  (registration side effects)
from explainers import stratified_eg, zennit_adapters  # noqa: F401  (registration side effects)
