"""Training, below the run's story: the training state, the step loop and evaluation, optimizers,
checkpoints, reproducibility, precision, CUDA graphs and DDP. Nothing here records anything: the
runner decides what is logged."""
