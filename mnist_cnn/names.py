"""Every name under which a run is recorded in MLflow and read back: tags, metrics, artifacts.

One place, so that the code that writes a tag and the code that reads it (a resumed sweep, the
pruner, `mnist-cnn-runs`, the champion) cannot drift apart. Tags prefixed `mnist_cnn.` are the
ones a user never needs to read.
"""

# What a run is: its fingerprints, copied onto every registered version of its model.
SEED, DEVICE, DETERMINISTIC = "seed", "device", "deterministic"
CONFIG_SHA256, DATA_SHA256, WEIGHTS_SHA256 = "config_sha256", "data_sha256", "weights_sha256"
GIT_COMMIT, GIT_DIRTY = "git_commit", "git_dirty"
# what the run trains in (trainer.precision resolved), and why
PRECISION, PRECISION_REASON = "precision", "precision_reason"
CUDA_GRAPH = (
    "cuda_graph"  # `failed: <cause>` when capturing the step failed and the run trained eagerly (engine.graphs)
)
FINGERPRINTS = (
    SEED,
    WEIGHTS_SHA256,
    DATA_SHA256,
    CONFIG_SHA256,
    GIT_COMMIT,
    GIT_DIRTY,
    DETERMINISTIC,
    DEVICE,
    PRECISION,
)
WORLD_SIZE = "world_size"  # processes that shared each batch
SLURM_JOB = "slurm_job_id"  # a requeued Slurm job finds its run by it

# How it was started and how it ended.
HYDRA_OVERRIDES, RESUME_OVERRIDES = "hydra_overrides", "resume_overrides"
RESUMED_AT_EPOCH = "resumed_at_epoch"
RESTART = "restart"  # a continued run: what continued it (runner.restart.Kind: resume, resume_sweep, slurm_requeue)
INTERRUPTED, RESUME_COMMAND, ERROR = "interrupted", "resume_command", "error"
PRUNED_AT = "pruned_at_epoch"  # a sweep's pruner stopped it after this epoch
STOPPED_EARLY_AT = "stopped_early_at_epoch"  # trainer.early_stopping ended it, FINISHED, after this epoch
RESTORED_EPOCH = "restored_epoch"  # trainer.restore_best: the epoch whose weights it tested and logged
CHAMPION_ERROR = "champion_error"  # a sweep's parent: why its champion could not be registered
FAILED_ON, FAILED_ON_CONFIG_VALUE = "failed_on", "config"  # a FAILED run that the same config would fail again
STOPPED = (
    INTERRUPTED,
    RESUME_COMMAND,
    ERROR,
    FAILED_ON,
    PRUNED_AT,
    CHAMPION_ERROR,
)  # what a run that finishes after all no longer carries

# Alive: a RUNNING run's heartbeat (tracking.heartbeat), and where its process runs.
HEARTBEAT, HEARTBEAT_INTERVAL = "mnist_cnn.heartbeat", "mnist_cnn.heartbeat_s"
HOST, PID = "mnist_cnn.host", "mnist_cnn.pid"
JOB_STARTED = "mnist_cnn.job_started"  # when its job (this process's part of it) began: JobContext.began
CLAIM = "mnist_cnn.continued_by."  # params N = 1, 2, ...: "HOST PID TIME" of each process that continued the run

# Its models.
MODEL_URI, BEST_MODEL_URI, BEST_EPOCH = "model_uri", "best_model_uri", "best_epoch"
EPOCH = "epoch"  # the tag of a model logged for one epoch (trainer.keep_best)

# A sweep's parent run.
SWEEP_ARGV = "sweep_argv"  # the sweep's command-line overrides (JSON), for resume_sweep
SWEPT = "swept"  # the swept keys (JSON)
CHAMPION = "champion"  # the alias of the best job's registered model, and the parent's tag naming it
BEST_RUN_ID, BEST_RUN_NAME = "best_run_id", "best_run_name"
CHAMPION_URL = "champion_url"  # the champion's page in the UI
OPTUNA_STUDY, OPTUNA_STORAGE = "optuna_study", "optuna_storage"  # an Optuna search's study, and where it is kept
IMPORTANCE = "importance_"  # + a searched key: its share of the objective's variance (Optuna's fANOVA)
PARETO_FRONT = "pareto_front."  # + a job's run id: on a multi-objective search's Pareto front (its values)
CHAMPION_RULE = "champion_rule"  # how a multi-objective sweep chose its best job, and so its champion
SWEEPER, LAUNCHER = "sweeper", "launcher"  # Hydra's classes that ran it
# The sweep's own seconds outside its jobs: from the command's start to its first job's, and from its
# last job's end to its report written.
SWEEP_STARTUP, SWEEP_REPORT = "time_sweep_startup_s", "time_sweep_report_s"
SWEEP_OVERRIDES, SWEEP_DIR, RESUMED_IN = "sweep_overrides", "sweep_dir", "resumed_in"  # the grid; its folders
PARENT_RUN = "mlflow.parentRunId"  # MLflow's own: a sweep's jobs are its parent's children

# How the commands name a model (a run's, or the registry's).
CONFIDENT = 0.5  # a model's answer is named only above this probability: more likely than all the others together
MODEL_FORMS = "a run id, runs:/ID/model, models:/NAME/VERSION or models:/NAME@ALIAS"

# An evaluation of a registered model (mnist-cnn-eval), logged as a run of its own.
EVALUATED_MODEL, SOURCE_RUN = "mnist_cnn.evaluated_model", "mnist_cnn.source_run"

# Metrics, each epoch (val_* with a validation split):
TRAIN_LOSS, TRAIN_ACC, VAL_LOSS, VAL_ACC = "train_loss", "train_acc", "val_loss", "val_acc"
LR, EPOCH_TIME, VAL_TIME, SAMPLES_PER_S = "lr", "epoch_time_s", "val_time_s", "samples_per_s"
EPOCH_METRICS = (VAL_ACC, VAL_LOSS, TRAIN_ACC, TRAIN_LOSS)  # what pruning and trainer.keep_best can rank
# and at the end:
TEST_LOSS, TEST_ACC = "test_loss", "test_acc"
TRAIN_TIME = "train_time_s"  # the seconds of every epoch with its validation
OBJECTIVES = (
    VAL_ACC,
    VAL_LOSS,
    TEST_ACC,
    TEST_LOSS,
    TRAIN_ACC,
    TRAIN_LOSS,
    TRAIN_TIME,
)  # what objective.metrics may name
SEED_METRICS = (VAL_ACC, TEST_ACC)  # what a sweep over seeds averages
N_PARAMS = "n_params"  # a param: the model's size
TORCH_THREADS = "torch_threads"  # a param: the threads torch trained with (a sweep's job: its share of the cores)


def class_metric(prefix: str, k: int) -> str:
    """The accuracy on the test images of class k: `test_acc_class_3` (`eval_test_acc_class_3` for mnist-cnn-eval)."""
    return f"{prefix}_acc_class_{k}"


def time_metric(phase: str) -> str:
    """The metric of one phase of a run's wall time (timing.PHASES): `time_train_s`."""
    return f"time_{phase}_s"


# Artifacts.
CONFIG_FILE = "config.yaml"  # the resolved config, credentials masked
ENVIRONMENT_FILE = "environment.txt"  # `name==version` of every installed package, as the run started
ONNX_FILE = "model.onnx"  # the final model as ONNX, with tracking.log_onnx=true
# Beside each logged model's MLmodel: what rebuilds it without unpickling (model.network, tracking.model).
NETWORK_FILE, STATE_DICT_FILE = "network.json", "state_dict.pt"
CHECKPOINT_FOLDER = "checkpoints"
CHECKPOINT = f"{CHECKPOINT_FOLDER}/last.pt"  # rewritten every epoch
