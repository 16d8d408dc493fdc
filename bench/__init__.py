"""Benchmarks of the claim path, wake-ups, rescue and the whole pipeline (``python -m bench``).

Everything runs in a scratch database of its own on the configured (or embedded) PostgreSQL,
created, migrated and dropped by the run, so no other data is touched. The output is one table
with the figures and the targets they are held to; it is a measurement, not a test.
"""
