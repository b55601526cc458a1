"""Foundations every other layer may use: errors, the generic registry, atomic I/O, device and
machine facts, the shared table schema. Imports nothing of pneumobench above it."""
