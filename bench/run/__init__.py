"""``python -m bench run``: config -> plan of units -> executors (local, Ray) -> cache -> scores -> report.

``config`` (the run configuration), ``plan`` (data, checkpoints, the images and units of work),
``unit`` (one unit: explain, then score), ``cache`` (the unit cache on disk), ``executors``
(local and Ray), ``manifest`` (provenance and cost accounting), ``runner`` (:func:`run`).
"""
