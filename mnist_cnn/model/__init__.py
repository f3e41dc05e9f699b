"""The network: the registry of layer kinds with shape inference (no torch), and the builder."""
