"""Console commands: `mnist-cnn-train` (Hydra; also `python -m mnist_cnn`), `mnist-cnn-runs`,
`mnist-cnn-predict` and `mnist-cnn-eval`."""
