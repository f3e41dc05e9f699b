"""Hydra multirun -> one MLflow parent run with every job as its child.

`MlflowSweepCallback` (registered in conf/config.yaml under hydra.callbacks) runs in the
launching process. Before any job starts it opens the tracking store once and the parent run (or,
with `resume_sweep=ID`, continues that one), and writes the sweep file (config.job.SweepFile: the
parent's id, the swept keys, an Optuna search's study) into the sweep folder, once, where every job
finds it whatever launcher started it (local, joblib, submitit, Slurm).
When the sweep ends, or is stopped, the parent gets the sweep's report (sweep.parent) and is
closed. In every job it also masks credentials in the files Hydra wrote (`.hydra/*.yaml`). MLflow
is imported only where a method needs it: Hydra makes this callback for single runs too.
"""

import atexit
import json
import logging
import math
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, open_dict

from mnist_cnn import interrupts, names
from mnist_cnn.config.checks import check_config
from mnist_cnn.config.job import JobContext, Study, SweepFile
from mnist_cnn.config.keys import override_key
from mnist_cnn.config.search import is_optuna, sampler_problem, study_of
from mnist_cnn.errors import EXIT_BAD_INPUT, EXIT_UNAVAILABLE, ConfigError
from mnist_cnn.sweep import workers
from mnist_cnn.sweep.slurm import slurm_problem
from mnist_cnn.timing import collector_paused, process_age
from mnist_cnn.tracking.links import resume_command
from mnist_cnn.tracking.redact import redact
from mnist_cnn.tracking.run_names import run_name
from mnist_cnn.tracking.states import RunState

log = logging.getLogger(__name__)


def shared_config_error(config: DictConfig, swept: List[str]) -> Optional[ConfigError]:
    """The config error that every job of a sweep would fail on, or None: the sweep's own config
    (the swept keys at their defaults) fails a check whose message names no key the sweep varies.
    The layers are one key here, because each layer's shape depends on those before it."""
    job = config.copy()
    with open_dict(job):
        job.pop("hydra", None)  # Hydra's own node, which a job's config does not have
    try:
        check_config(job, JobContext(multirun=True))
    except ConfigError as e:
        varied = {"model" if key.startswith("model.") else key for key in swept}
        if not any(re.search(rf"(?<![\w.]){re.escape(key)}(?!\w)", str(e)) for key in varied):
            return e
    return None


def folder_problem(key: str, folder: str) -> Optional[str]:
    """Why Hydra could not make or write its output folder `folder` (config key `key`), or None. The
    folder is made now, as Hydra would a moment later, and a file written in it: permissions do not
    tell root, and a read-only disk or a file in the path only shows when trying."""
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as e:
        return f"{key}={folder}: cannot make or write that folder ({e.strerror}); choose another {key}."
    return None


def refuse(problem: Optional[str]) -> None:
    """End the command with `problem` in one line, exit 2; Hydra would make an exception raised in a
    callback a warning and go on."""
    if problem is not None:
        print(f"mnist-cnn-train: {redact(problem)}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)


def swept_keys(config: DictConfig) -> List[str]:
    """The keys a sweep varies: its grid's sweep overrides, then Optuna's search space; each once (a
    key Optuna searches may be overridden on the command line too)."""
    grid = OverridesParser.create().parse_overrides(list(config.hydra.overrides.task))
    keys = [o.get_key_element() for o in grid if o.is_sweep_override()] + list(config.hydra.sweeper.get("params") or {})
    return list(dict.fromkeys(keys))


def sweep_argv(config: DictConfig) -> List[str]:
    """The sweep's overrides as `resume_sweep=` adds them again, with `hydra.sweeper.storage` absolute
    (config.search.storage_at): a resume started from another folder continues the same study."""
    argv = list(config.hydra.overrides.hydra) + list(config.hydra.overrides.task)
    return [_absolute_storage(config) if override_key(a) == "hydra.sweeper.storage" else a for a in argv]


def _absolute_storage(config: DictConfig) -> str:
    """The override of an Optuna search's storage, its file absolute, in Hydra's quotes: any path parses."""
    return "hydra.sweeper.storage='" + study_of(config, None).storage.replace("'", "\\'") + "'"


def side_by_side(config: DictConfig) -> int:
    """How many jobs of the sweep `config` runs at once on one machine (they share its cores and
    GPUs): joblib's n_jobs; submitit's local jobs, the Optuna search's trials in flight or the whole
    grid (Hydra's basic sweeper launches it at once); one for Hydra's basic launcher, which runs
    them one after another, and for Slurm, which gives each job an allocation of its own."""
    launcher, sweeper = config.hydra.launcher, config.hydra.sweeper
    kind = str(launcher._target_).rsplit(".", 1)[-1]
    if kind == "JoblibLauncher":
        n_jobs = launcher.n_jobs or 1
        return n_jobs if n_jobs > 0 else max(1, (os.cpu_count() or 1) + 1 + n_jobs)  # joblib's count: -1, all
    if kind == "LocalLauncher":
        if is_optuna(sweeper):
            return sweeper.n_jobs
        grid = OverridesParser.create().parse_overrides(list(config.hydra.overrides.task))
        jobs = math.prod(len(list(o.sweep_string_iterator())) for o in grid if o.is_sweep_override())
        return min(jobs, sweeper.get("max_batch_size") or jobs)
    return 1


class MlflowSweepCallback(Callback):
    """Opens the parent run before the jobs of a multirun and summarises it after them."""

    def __init__(self) -> None:
        self.run_id: Optional[str] = None
        self.heartbeat: Any = None
        self.swept: List[str] = []

    def __getstate__(self) -> dict:
        """Launchers pickle the callbacks into every job; the parent run and its heartbeat stay here."""
        return {"run_id": None, "heartbeat": None, "swept": []}

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Hydra has just written .hydra/{config,hydra,overrides}.yaml (and a sweep's multirun.yaml):
        mask any credentials a config file put there."""
        written = [Path(config.hydra.sweep.dir) / "multirun.yaml"]
        if config.hydra.output_subdir is not None:
            written += (Path(config.hydra.runtime.output_dir) / config.hydra.output_subdir).glob("*.yaml")
        for path in written:
            text = path.read_text() if path.is_file() else ""
            if redact(text) != text:
                path.write_text(redact(text))

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        refuse(folder_problem("hydra.run.dir", config.hydra.run.dir))  # Hydra would print a traceback making it

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.swept = swept_keys(config)
        error = shared_config_error(config, self.swept)
        problem = str(error) if error is not None else sampler_problem(config.hydra.sweeper)
        problem = problem or slurm_problem(config.hydra.launcher) or self._search_problem(config)
        refuse(problem or folder_problem("hydra.sweep.dir", config.hydra.sweep.dir))  # once, before the parent opens
        if config.tracking.enabled:
            with collector_paused():  # MLflow's import and store: the sweep's jobs wait for its parent run
                self._open(config)
        if workers.in_pool(config):  # which job a worker that dies ran, and its run (cli.train)
            workers.watch(Path(config.hydra.sweep.dir), config.tracking.uri, self.run_id, self.swept)

    @staticmethod
    def _search_problem(config: DictConfig) -> Optional[str]:
        """Why an Optuna search could not run (sweep.checks), or None (also for a grid)."""
        if not is_optuna(config.hydra.sweeper):
            return None
        from mnist_cnn.sweep.checks import search_problem  # Optuna: seconds to import, only for a search

        with collector_paused():
            return search_problem(config)

    def _open(self, config: DictConfig) -> None:
        """Open the parent run (or continue it) and write the sweep file its jobs read."""
        from mnist_cnn.sweep.parent import (  # MLflow: seconds to import, and a single run never needs it
            continue_parent_run,
            open_parent_run,
        )

        sweep_dir = Path(config.hydra.sweep.dir)
        grid = list(config.hydra.overrides.task)
        tags = {
            names.SWEEPER: config.hydra.sweeper._target_.rsplit(".", 1)[-1],
            names.LAUNCHER: config.hydra.launcher._target_.rsplit(".", 1)[-1],
            names.SWEEP_OVERRIDES: redact(" ".join(grid)),
            names.SWEEP_ARGV: redact(json.dumps(sweep_argv(config))),
            names.SWEPT: json.dumps(self.swept),
            names.SWEEP_DIR: str(sweep_dir),
        }
        with interrupts.held():  # a signal waits until the parent is ours to close, then stops the sweep
            if config.resume_sweep:
                self.run_id = config.resume_sweep
                self.heartbeat = continue_parent_run(config, self.run_id, {names.RESUMED_IN: str(sweep_dir)})
            else:
                self.run_id, self.heartbeat = open_parent_run(config, run_name(grid) or sweep_dir.name, tags)
            atexit.register(self._close, config, RunState.STOPPED)  # a stopped sweep never leaves it RUNNING
        study = self._study(config) if is_optuna(config.hydra.sweeper) else None
        SweepFile(self.run_id, tuple(self.swept), study, side_by_side(config)).write(sweep_dir)

    def _study(self, config: DictConfig) -> Optional[Study]:
        """The study of an Optuna search, named on the parent run; for the sweep file only where its
        storage's URL holds no password, which the sweep folder must not (its jobs prune from MLflow)."""
        from mnist_cnn.sweep.parent import tag_parent_run  # MLflow, as in on_multirun_start

        study = study_of(config, self.run_id)
        tag_parent_run(config, self.run_id, {names.OPTUNA_STUDY: study.name, names.OPTUNA_STORAGE: study.storage})
        if redact(study.storage) != study.storage:
            log.info("the study's storage holds a password, which the sweep folder must not: jobs prune from MLflow")
            return None
        return study

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        run_id = self.run_id
        summary = self._close(config, RunState.FINISHED)
        if names.CHAMPION_ERROR in summary:  # Hydra would make an exception a warning and exit 0
            print(
                f"mnist-cnn-train: the sweep's report is on its parent run {run_id}, but registering its champion as "
                f"{config.tracking.register_as!r} failed ({summary[names.CHAMPION_ERROR]}). Once the store takes it, "
                f"register it with:\n  {resume_command(str(run_id), config.tracking.uri, sweep=True)}",
                file=sys.stderr,
            )
            sys.exit(EXIT_UNAVAILABLE)

    def _close(self, config: DictConfig, state: RunState) -> Dict[str, Any]:
        """End the parent run with the sweep's report; returns its summary (empty if none is open)."""
        workers.unwatch()
        if self.run_id is None:
            return {}
        from mnist_cnn.sweep.parent import close_parent_run  # MLflow: see on_multirun_start

        run_id = self.run_id
        self.heartbeat.stop()
        summary, link = close_parent_run(config, run_id, state, self.swept, time.time() - process_age())
        # only now: a signal that stopped the closing (during the report's imports) leaves the parent to
        # the exit handler's close, which ends it STOPPED; taken before, the parent stayed RUNNING
        self.run_id = None
        log.info(
            "sweep parent run %s: %s\n  %s",
            run_id,
            ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in summary.items()),
            link,
        )
        if names.RESUME_COMMAND in summary:
            log.warning("sweep stopped; finish it, each job once, with:\n  %s", summary[names.RESUME_COMMAND])
        return summary
