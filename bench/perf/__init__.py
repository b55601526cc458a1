"""Performance tooling used by the runner and by tests/benchmarks: the glibc allocator setting,
peak-memory measurement, and the cost floor (model passes x the time of one pass)."""
