"""Statistical inference for every verdict a reader sees: one layer beneath the tables and figures.

``bench.report`` renders; this package decides. It imports nothing of pneumobench above
``bench.core``, and nothing here reads or writes files.

=================  ===========================================================================
module             what it holds
=================  ===========================================================================
``settings``       :class:`StatsSettings` (``[stats]`` of the run config) and the declared test
                   families (:data:`FAMILIES`): which comparisons share a multiplicity correction
``estimate``       means and their intervals: the paired t for one model, the crossed
                   image x seed random-effects estimator for several seeds, the BCa bootstrap
                   for descriptive intervals, Holm and Bonferroni
``compare``        every pairwise comparison of a table (paired, family-adjusted, with TOST
                   equivalence), dominance ranks, compact letter displays, Friedman
``agreement``      Kendall's W, Kendall's tau-b, Krippendorff's alpha, split-half, with
                   image-resampled intervals
``power``          power, the smallest detectable difference and the n needed, for the same
                   tests the tables run
``aliases``        explainers whose scores are identical on every image: one method, not two
``weighting``      means reweighted from a cell-balanced sample to the test split's cells
``classifier``     ROC AUC, accuracy and the confusion matrix, McNemar's exact test, a tuned
                   classifier against its parent on the same images
=================  ===========================================================================
"""
