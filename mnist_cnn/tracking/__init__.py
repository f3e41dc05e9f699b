"""Everything MLflow sees: opening the store, a run's life (heartbeat, final status), the logged
model, finding runs and models, links into the UI, and keeping credentials out of every record.
It records what it is given: the figures are drawn by the caller.

Most modules here import MLflow, which is slow to import; `heartbeat`, `links`, `redact` and
`run_names` do not, so that the command line can check a config first.
"""
