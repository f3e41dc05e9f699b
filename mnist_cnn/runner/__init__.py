"""The run's story, above the engine: where a run starts (start), what it needs before its first
step (setup), the epochs and the end (train), and what rank 0 records (record)."""
