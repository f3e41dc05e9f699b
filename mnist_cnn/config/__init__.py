"""The config: typed schemas of every group, the keys that do not change a result, and the checks
that reject an impossible config in plain Python, before torch or MLflow is imported."""
