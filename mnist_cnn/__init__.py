"""mnist_cnn: Hydra-configured CNN experiments on MNIST-format data, tracked in MLflow.

The package in layers, lowest first; each imports only from those below it (docs/architecture.md
draws them from the code; tests/test_layers.py keeps it so):

- `names`, `errors`: what runs are recorded under in MLflow; what can go wrong, with exit codes.
- `interrupts`, `timing`: what Ctrl-C and SIGTERM do to a run; where its wall time goes.
- `data`, `model`: MNIST-format files, checks and in-memory splits; layer kinds, shape inference, the builder.
- `config`: the config tree (`conf/`), its typed schema, and the checks that run before torch loads.
- `engine`: the training state, the step loop and evaluation, optimizers, checkpoints,
  reproducibility, precision, CUDA graphs, DDP.
- `report`, `tracking`: scoring a model class by class, with figures; everything MLflow sees.
- `sweep`: a multirun as one experiment: its parent run, pruning, resuming it, the champion.
- `runner`: one run's story: where it starts, its set-up, its epochs, what it records.
- `cli`: the console commands `mnist-cnn-train` (also `python -m mnist_cnn`), `-runs`, `-predict`, `-eval`.
"""
