"""Console commands: `mnist-cnn-train` (Hydra; also `python -m mnist_cnn`) and `mnist-cnn-runs`."""
