"""Everything MLflow sees: opening the store, a run's life (heartbeat, final status), the logged
model, sweep parent runs, resuming a run, and keeping credentials out of every record.

Modules here import MLflow, which takes seconds; `sweep` and `redact` import it lazily so that the
command line can check a config first.
"""
