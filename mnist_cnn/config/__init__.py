"""The config: the tree of YAML files and where users add theirs (tree), the typed schema of every
group (schema), the keys that do not change a result and the fingerprint of those that do (keys),
and the checks that reject an impossible config in plain Python, before torch or MLflow is
imported (checks)."""
