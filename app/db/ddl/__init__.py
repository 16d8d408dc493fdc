"""DDL rendered for the migrations: the transition guard and timestamp triggers (``guard``) and
the claim function (``claim_task``; ``claim_task_NNNN`` are frozen renderers of old revisions)."""
