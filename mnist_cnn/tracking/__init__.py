"""Everything MLflow sees: opening the store, a run's life (heartbeat, final status), the logged
model, sweep parent runs, resuming a run, and keeping credentials out of every record.

Most modules here import MLflow, which takes seconds; `sweep`, `names`, `redact` and `heartbeat` do not,
so that the command line can check a config first.
"""
