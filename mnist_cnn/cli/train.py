"""`mnist-cnn-train` (also `python -m mnist_cnn`): compose the config with Hydra, check it, train.

Before Hydra reads the command line, credentials in a `tracking.uri=` override move into the
environment (so Hydra's own files and console never hold them). An error in a config file Hydra
composes (YAML that does not parse, a key no schema has) is one line naming the file, and the
line or the closest key, rather than Hydra's multi-line report.
The config checks are plain Python: a bad config fails in about a second, before torch loads.
"""

import atexit
import logging
import os
import sys
import threading
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from typing import Callable, Iterator, List, NoReturn, Union

import hydra
import yaml
from hydra.errors import HydraException
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from mnist_cnn.cli.common import run_command
from mnist_cnn.config import tree
from mnist_cnn.config.checks import check_config
from mnist_cnn.config.job import JobContext
from mnist_cnn.config.keys import override_key
from mnist_cnn.config.paths import make_paths_absolute
from mnist_cnn.errors import EXIT_BAD_INPUT, EXIT_INTERRUPTED, ConfigError, UserError
from mnist_cnn.interrupts import Signals
from mnist_cnn.runner.outcome import Outcome
from mnist_cnn.sweep import workers
from mnist_cnn.sweep.relaunch import MULTIRUN_FLAGS, sweep_arguments
from mnist_cnn.timing import JobClock
from mnist_cnn.tracking.redact import move_credentials, redact

log = logging.getLogger("mnist_cnn")
HYDRA_FULL_ERROR = "HYDRA_FULL_ERROR"


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


def check_launcher(argv: List[str]) -> List[str]:
    """`argv`, once it is known not to name a launcher (`hydra/launcher=slurm`, joblib, ...) without
    -m: a launcher runs the jobs of a multirun, and Hydra would ignore it and train here."""
    chosen = [
        a for a in argv[1:] if override_key(a) == "hydra.launcher" or override_key(a).startswith("hydra.launcher.")
    ]
    if chosen and not set(MULTIRUN_FLAGS) & set(argv):
        raise ConfigError(f"{chosen[0]} launches the jobs of a sweep; add -m (--multirun), or drop it to train here.")
    return argv


RUNNER = "mnist_cnn.runner.train"  # imported by a process's first job: that job pays the imports


class Command:
    """mnist-cnn-train in this process: its signals, sent to the job that runs now, and whether Hydra
    has handed it a job yet (Hydra exits with 1 for its own errors too: before any job, that is bad
    input)."""

    def __init__(self) -> None:
        self.signals = Signals()
        self.started = False

    def job(self, cfg: DictConfig) -> Outcome:
        """Hydra's task: train one job; return how it ended (an Optuna search's sweeper reads its objective)."""
        self.started = True
        # the run's time_total_s and time_startup_s count from here (the first job: from the process's start)
        clock = JobClock.start(pays_imports=RUNNER not in sys.modules)
        self.signals.install()  # SIGTERM, like Ctrl-C, now ends the run with a status instead of killing it
        ctx = None
        try:
            # a stop asked for since the sweep's last job ended stops here, not in Hydra's code
            ctx = JobContext.read(clock, self.signals.job_started())
            if ctx.in_pool:  # the launching process can say which job a worker that dies ran
                workers.job_started(ctx.sweep_dir, ctx.number, ctx.overrides)
            make_paths_absolute(cfg, ctx.cwd)
            if not ctx.multirun:  # plain Python: a bad config fails in about a second, before torch loads
                check_config(cfg, ctx)  # (a sweep's job is checked by the runner, which records its failure)
            from mnist_cnn.runner.train import run  # torch and MLflow: seconds to import, only once the config is good
            from mnist_cnn.sweep.prune import pruner_hooks  # Optuna and MLflow, as above

            return run(cfg, ctx.output_dir, ctx, pruner_hooks(cfg, ctx))
        except KeyboardInterrupt:  # the run is STOPPED; tracking logged how to resume it
            if ctx is not None and ctx.in_pool:
                # raised, joblib would end every other worker, mid-step, unrecorded (a Slurm job must
                # exit instead: a requeued job that returned would hand its launcher a result)
                return Outcome({}, stopped=True)
            sys.exit(EXIT_INTERRUPTED)
        except UserError as e:
            log.error("%s", redact(str(e)))
            sys.exit(e.exit_code)
        finally:
            clock.startup_done()  # a job that failed before its first step leaves the collector on for the next
            if ctx is not None and ctx.in_pool:
                workers.job_ended(ctx.sweep_dir)
            shares, worker = (ctx.shares_process, ctx.multirun) if ctx is not None else (False, False)
            self.signals.job_ended(sweeping=shares, worker=worker)


def command() -> None:
    """Prepare the command line, then hand it to Hydra; exits with the documented code."""
    sys.argv = move_credentials(sys.argv)
    # resume_sweep=ID: the sweep's own overrides
    sys.argv = run_command("mnist-cnn-train", lambda: sweep_arguments(check_launcher(sys.argv)))
    tree.register()
    process = Command()
    process.signals.install()  # a sweep's launching process too: a stop ends its parent run STOPPED
    main = hydra.main(version_base="1.3", config_path=str(tree.CONF_DIR), config_name=tree.CONFIG_NAME)(process.job)
    try:
        with hydra_raises():
            # Ctrl-C between a sweep's jobs: exit 130, every job so far recorded, the parent STOPPED
            run_command("mnist-cnn-train", lambda: launched(main))
    except (HydraException, OmegaConfBaseException, yaml.YAMLError) as e:
        if process.started:  # not the config: a job's own error, a bug
            raise
        print(f"mnist-cnn-train: {tree.composition_error(e, tree.config_dirs(sys.argv[1:]))}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)


def launched(main: Callable[[], None]) -> None:
    """Hydra's `main`; a sweep whose joblib worker died (joblib raises TerminatedWorkerError, a
    BrokenProcessPool, out of the launcher) ends with one line saying which job's, and exit 3."""
    try:
        main()
    except BrokenProcessPool as e:
        raise workers.lost(e) from None


@contextmanager
def hydra_raises() -> Iterator[None]:
    """Hydra raises the errors it meets instead of printing them (its documented HYDRA_FULL_ERROR=1):
    an error in a config file it composes, and only in a file it composes, is then told in one
    line naming the file (a broken file that the command does not use stops nothing)."""
    before = os.environ.get(HYDRA_FULL_ERROR)
    os.environ[HYDRA_FULL_ERROR] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(HYDRA_FULL_ERROR, None)
        else:
            os.environ[HYDRA_FULL_ERROR] = before


if __name__ == "__main__":
    main()
