"""What the tests share: tiny IDX data, composed configs, a pre-migrated MLflow store, processes."""
