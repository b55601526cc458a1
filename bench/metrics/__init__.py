"""Attribution metrics: one module per family, all in the METRICS registry.

=====================  ==============================================================
module                 metrics
=====================  ==============================================================
``drop_increase``      drop_rate, increase_rate
``rise``               deletion_auc, insertion_auc
``additivity``         additivity_error, additivity_error_relative
``road``               road_morf, road_lerf
``randomisation``      randomisation_similarity
``localisation``       localisation_precision, pointing_game
=====================  ==============================================================

``base`` holds the registry, the protocol (:class:`MetricContext`, :class:`MetricResult`) and
:func:`compute_metric`; ``perturbation`` the pixel ranking and perturbation curves the families
share. A new metric is one module here (imported below) or a plug-in package registering
through the ``bench.metrics`` entry-point group: docs/adding-a-metric.md.
"""
from bench.metrics.base import (  # noqa: F401
    CONTEXT_FIELDS,
    METRICS,
    PREPROCESS_MODES,
    PROTOCOL,
    READS,
    Curve,
    MetricContext,
    MetricResult,
    compute_metric,
    metric_params,
    preprocess_attributions,
    register_metric,
)
from bench.metrics.perturbation import (  # noqa: F401
    DEFAULT_CHUNK,
    SUBSTRATES,
    curve_boundaries,
    gaussian_blur,
    make_substrate,
    normalised_trapezoid,
    perturbation_curve,
    perturbed_probabilities,
    rank_pixels,
)
from bench.metrics import additivity, drop_increase, localisation, randomisation, rise, road  # noqa: F401
from bench.metrics.additivity import additivity_error, additivity_error_relative  # noqa: F401
from bench.metrics.drop_increase import drop_rate, increase_rate  # noqa: F401
from bench.metrics.localisation import localisation_precision, pointing_game  # noqa: F401
from bench.metrics.randomisation import randomisation_layers, randomisation_per_layer, randomisation_similarity, spearman  # noqa: F401
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
