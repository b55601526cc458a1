"""Per-image scores -> statistics (CIs, ranks, paired tests) -> tables and figures.

``stats`` (scipy-based statistics), ``leaderboard`` (leaderboard and pre/post tables, CSV and
Markdown), ``plots`` (figures and the attribution-example store), ``rebuild`` (a run's files ->
every table and figure). Reads only files and DataFrames: nothing here runs a model.
"""
