"""Attribution metrics: one module per family, all in the METRICS registry.

=====================  ==============================================================
module                 metrics
=====================  ==============================================================
``drop_increase``      drop_rate, increase_rate
``rise``               deletion_auc, insertion_auc
``additivity``         additivity_error, additivity_error_relative
``road``               road_morf, road_lerf
``randomisation``      randomisation_similarity
``localisation``       localisation_precision, pointing_game, mask_share, mask_share_signed
``robustness``         max_sensitivity, avg_sensitivity, local_lipschitz_estimate
``concentration``      sparseness, complexity
``fidelity``           infidelity
``correlation``        faithfulness_correlation, monotonicity_correlation
=====================  ==============================================================

``base`` holds the registry, the protocol (:class:`MetricContext`, :class:`MetricResult`) and
:func:`compute_metric`; ``perturbation`` the pixel ranking and perturbation curves the families
share. A new metric is one module here (imported below) or a plug-in package registering
through the ``bench.metrics`` entry-point group: docs/adding-a-metric.md.
"""

from bench.metrics.base import (  # noqa: F401
    CONTEXT_FIELDS,
    CONTROL_ROLES,
    METRICS,
    PREPROCESS_MODES,
    PROTOCOL,
    READS,
    Curve,
    MetricContext,
    MetricResult,
    as_attribution,
    compute_metric,
    map_values,
    metric_params,
    pearson,
    preprocess_attributions,
    register_metric,
    scoring_logits,
    scoring_precision,
    spearman,
)
from bench.metrics.perturbation import (  # noqa: F401
    DEFAULT_CHUNK,
    SUBSTRATES,
    chunked_outputs,
    curve_boundaries,
    gaussian_blur,
    make_substrate,
    masked_outputs,
    normalised_trapezoid,
    per_image_draws,
    perturbation_curve,
    perturbed_probabilities,
    rank_pixels,
    target_outputs,
)
from bench.metrics import (  # noqa: F401
    additivity,
    concentration,
    correlation,
    drop_increase,
    fidelity,
    localisation,
    randomisation,
    rise,
    road,
    robustness,
)
from bench.metrics.additivity import additivity_error, additivity_error_relative  # noqa: F401
from bench.metrics.concentration import complexity, sparseness  # noqa: F401
from bench.metrics.correlation import (  # noqa: F401
    attribution_groups,
    faithfulness_correlation,
    monotonicity_correlation,
    random_subsets,
    subset_correlation,
)
from bench.metrics.drop_increase import drop_rate, increase_rate  # noqa: F401
from bench.metrics.fidelity import gaussian_perturbations, infidelity, infidelity_from_perturbations  # noqa: F401
from bench.metrics.localisation import localisation_precision, mask_share, mask_share_signed, pointing_game  # noqa: F401
from bench.metrics.randomisation import (  # noqa: F401
    randomisation_layers,
    randomisation_per_layer,
    randomisation_similarity,
)
from bench.metrics.rise import deletion_auc, insertion_auc  # noqa: F401
from bench.metrics.road import (  # noqa: F401
    ROAD_PERCENTAGES,
    road_curve,
    road_impute,
    road_impute_many,
    road_lerf,
    road_morf,
    road_perturbed_inputs,
)
from bench.metrics.robustness import (  # noqa: F401
    avg_sensitivity,
    local_lipschitz_estimate,
    max_sensitivity,
    relative_sensitivities,
    uniform_perturbations,
)
