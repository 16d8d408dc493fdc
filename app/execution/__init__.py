"""Running stages: the runner (claim, run, record, continue), the hot path's single statements
it calls, and the arq wake-ups that tell idle workers to claim."""
