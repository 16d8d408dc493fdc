"""The admin commands of ``pipeline``: one module per group, sharing ``context``."""
