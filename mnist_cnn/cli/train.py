"""`mnist-cnn-train` (also `python -m mnist_cnn`): compose the config with Hydra, check it, train.

Before Hydra reads the command line, credentials in a `tracking.uri=` override move into the
environment (so Hydra's own files and console never hold them) and every YAML file of the config
tree is parsed, so a typo is one line naming the file and line rather than a long traceback.
The config checks are plain Python: a bad config fails in about a second, before torch loads.
"""

import atexit
import logging
import os
import sys
import threading
from pathlib import Path
from typing import List, NoReturn, Union

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from mnist_cnn import interrupts, timing
from mnist_cnn.config import tree
from mnist_cnn.config.checks import check_config
from mnist_cnn.config.job import Outcome, in_multirun, sweeps_here
from mnist_cnn.config.keys import override_key
from mnist_cnn.config.paths import make_paths_absolute
from mnist_cnn.errors import EXIT_BAD_INPUT, EXIT_INTERRUPTED, ConfigError, UserError
from mnist_cnn.sweep.relaunch import MULTIRUN_FLAGS, sweep_arguments
from mnist_cnn.tracking.redact import move_credentials, redact

log = logging.getLogger("mnist_cnn")


class _Task:
    started = False  # Hydra exits with 1 for its own errors too: before the task, that is bad input


def main() -> None:
    """The console entry point: run the command, then end the process at once (`exit_now`), unless
    a profiler or debugger watches it and wants Python's own exit to write its results."""
    if sys.getprofile() is not None or sys.gettrace() is not None:
        return command()
    try:
        command()
    except SystemExit as e:
        exit_now(e.code)
    exit_now(0)


def exit_now(code: Union[int, str, None]) -> NoReturn:
    """End the process without Python's own teardown, which frees the millions of objects torch,
    MLflow and SQLAlchemy made one by one: seconds after every run (docs/speed.md). Everything a run
    writes is closed by then. First, as Python's own exit does: threads are joined and the hooks
    that process pools register with threading run (they stop joblib's workers, which multiprocessing's
    exit handler would otherwise wait for until they time out), then the exit handlers; log files
    and the console are flushed last."""
    if isinstance(code, str):  # sys.exit("message"): printed, status 1, as Python does
        print(code, file=sys.stderr)
        code = 1
    threading._shutdown()
    atexit._run_exitfuncs()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code or 0)


def check_launcher(argv: List[str]) -> None:
    """A launcher (`hydra/launcher=slurm`, joblib, ...) runs the jobs of a multirun; without -m Hydra
    would ignore it and train here, in this process."""
    chosen = [
        a for a in argv[1:] if override_key(a) == "hydra.launcher" or override_key(a).startswith("hydra.launcher.")
    ]
    if chosen and not set(MULTIRUN_FLAGS) & set(argv):
        raise ConfigError(f"{chosen[0]} launches the jobs of a sweep; add -m (--multirun), or drop it to train here.")


def command() -> None:
    """Prepare the command line, then hand it to Hydra; exits with the documented code."""
    sys.argv = move_credentials(sys.argv)
    try:
        check_launcher(sys.argv)
        sys.argv = sweep_arguments(sys.argv)  # resume_sweep=ID: the sweep's own overrides
    except UserError as e:
        print(f"mnist-cnn-train: {redact(str(e))}", file=sys.stderr)
        sys.exit(e.exit_code)
    for problem in tree.yaml_problems(tree.config_dirs(sys.argv[1:])):
        print(f"mnist-cnn-train: {problem}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    tree.register()
    try:
        train()
    except KeyboardInterrupt:  # between a sweep's jobs: every job so far is recorded, the parent KILLED
        sys.exit(EXIT_INTERRUPTED)
    except SystemExit as e:
        if e.code == 1 and not _Task.started:  # an override or config Hydra could not compose
            sys.exit(EXIT_BAD_INPUT)
        raise


@hydra.main(version_base="1.3", config_path=str(tree.CONF_DIR), config_name=tree.CONFIG_NAME)
def train(cfg: DictConfig) -> Outcome:
    """Train one run; return how it ended (the sweeper of an Optuna search reads its objective)."""
    _Task.started = True
    timing.job_started()  # the run's time_total_s and time_startup_s count from here (the first job: process start)
    interrupts.install()  # SIGTERM, like Ctrl-C, now ends the run with a status instead of killing it
    try:
        interrupts.job_started()  # a stop asked for since the sweep's last job ended: here, not in Hydra's code
        make_paths_absolute(cfg, Path(HydraConfig.get().runtime.cwd))
        check_config(cfg)  # plain Python: a bad config fails in about a second, before torch loads
        from mnist_cnn.runner.train import run  # torch and MLflow: seconds to import, only once the config is good

        return run(cfg, Path(HydraConfig.get().runtime.output_dir))
    except KeyboardInterrupt:  # the run is KILLED; tracking logged how to resume it
        sys.exit(EXIT_INTERRUPTED)
    except Exception as e:
        if in_multirun():  # one failed job must not end the sweep: record it as FAILED and go on
            log.error("job failed, the sweep goes on: %s", redact(f"{type(e).__name__}: {e}"))
            _record_failed_job(cfg, e)
            return Outcome({})
        if isinstance(e, UserError):
            log.error("%s", redact(str(e)))
            sys.exit(e.exit_code)
        raise
    finally:
        interrupts.job_ended(sweeping=sweeps_here())  # a joblib worker must still stop when its pool ends it


def _record_failed_job(cfg: DictConfig, error: Exception) -> None:
    """Give a job that failed before its run opened (bad config or data) a FAILED run in the sweep,
    unless a resumed sweep's job finds the one it had (a FAILED job is never run again)."""
    if not cfg.tracking.enabled or hasattr(error, "mlflow_run_id"):
        return
    from mnist_cnn.sweep.restart import earlier_run  # MLflow: seconds to import, only for a failed sweep job
    from mnist_cnn.tracking.run import record_failed_job  # MLflow, as above

    try:
        earlier = earlier_run(cfg) if cfg.resume_sweep else None
        if earlier is not None:
            log.info("run %s did this job already (%s): not run again", earlier.info.run_id, earlier.info.status)
            return
        record_failed_job(cfg, error)
    except Exception as e:  # noqa: BLE001 - the store itself may be what failed
        log.warning("could not record the failed job in MLflow: %s", redact(str(e))[:300])


if __name__ == "__main__":
    main()
