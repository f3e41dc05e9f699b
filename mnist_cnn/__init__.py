"""mnist_cnn: Hydra-configured CNN experiments on MNIST-format data, tracked in MLflow.

Subpackages, in the order a run meets them:

- `config`: the typed schema of every config group and the checks that run before torch loads.
- `model`: the registry of layer kinds, shape inference, and the `nn.Sequential` builder.
- `data`: what each dataset is, IDX file reading, downloads, in-memory splits and batches.
- `engine`: the training loop, optimizers, checkpoints, reproducibility, interrupt handling.
- `tracking`: everything MLflow sees: the store, runs, heartbeats, sweeps, resume, redaction.
- `cli`: the console commands `mnist-cnn-train` (also `python -m mnist_cnn`) and `mnist-cnn-runs`.
"""
