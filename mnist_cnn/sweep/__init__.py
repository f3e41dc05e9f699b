"""Multiruns as one experiment: the parent run of a sweep and its report, pruning hopeless jobs,
resuming a stopped sweep, the champion model, and the Optuna sweeper that can resume.

Everything here works through the MLflow store every job already writes to, so it behaves the
same under every Hydra launcher (basic, joblib, submitit, Slurm).
"""
