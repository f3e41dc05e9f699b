"""Console commands: `mnist-cnn-train` (Hydra; also `python -m mnist_cnn`), `mnist-cnn-runs`,
`mnist-cnn-predict`, `mnist-cnn-eval`, `mnist-cnn-verify` and `mnist-cnn-export`; what they share is
in `common`."""
