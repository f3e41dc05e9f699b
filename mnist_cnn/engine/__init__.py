"""Training one run: the loop and evaluation, optimizers, checkpoints, reproducibility, signals."""
