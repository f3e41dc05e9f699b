"""Multiruns as one experiment: the parent run of a sweep and its report (tables, plots), pruning
hopeless jobs, relaunching a stopped sweep and restarting its jobs, the champion model, and the
warm start of the Optuna sweeper that can resume.

Everything here works through the MLflow store every job already writes to, so it behaves the
same under every Hydra launcher (basic, joblib, submitit, Slurm).
"""
