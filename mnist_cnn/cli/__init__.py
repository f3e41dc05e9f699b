"""Console commands: `mnist-cnn-train` (Hydra; also `python -m mnist_cnn`), `mnist-cnn-runs`,
`mnist-cnn-predict`, `mnist-cnn-eval`, `mnist-cnn-verify`, `mnist-cnn-export` and `mnist-cnn-demo`;
what they share is in `common`."""
