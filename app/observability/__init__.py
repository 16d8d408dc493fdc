"""Prometheus metrics: what the workers count as they run stages (``instruments``), each worker
process's own endpoint (``endpoint``), and the queue's state read at scrape time (``queue``).
"""
