"""`mnist-cnn-train -m resume_sweep=PARENT_RUN_ID`: the command line of a stopped sweep, relaunched.

Before Hydra reads the command line, `sweep_arguments` adds the overrides the sweep's parent run
recorded; new values are accepted only for the run settings (the launcher, tracking.uri, ...). Each
job then finds its earlier run (runner.restart), and an Optuna search continues its study
(sweep.study).
"""

import json
import sys
from typing import List

from mnist_cnn import names
from mnist_cnn.config.keys import is_run_setting, override_key
from mnist_cnn.config.paths import default_tracking_uri
from mnist_cnn.errors import ConfigError

MULTIRUN_FLAGS = ("-m", "--multirun")


def sweep_arguments(argv: List[str]) -> List[str]:
    """`argv` with the recorded overrides of the sweep that `resume_sweep=ID` names added; the
    command line as it was when no resume_sweep is given."""
    given = [a for a in argv[1:] if override_key(a) == "resume_sweep"]
    if not given:
        return argv
    parent_id, where = given[-1].partition("=")[2], given[-1]
    if not parent_id.strip():
        raise ConfigError("resume_sweep= is empty: give the id of a sweep's parent run (mnist-cnn-runs lists them).")
    if not set(MULTIRUN_FLAGS) & set(argv):
        raise ConfigError(f"{where} relaunches a sweep: add -m (--multirun).")
    recorded = _recorded_overrides(_tracking_uri(argv), parent_id, where)
    ours = {override_key(a): a for a in argv[1:] if "=" in a}
    changed = [a for key, a in ours.items() if not is_run_setting(key) and a not in recorded]
    if changed:
        raise ConfigError(
            f"{where}: {' '.join(changed)} would change the sweep, which keeps its own overrides "
            f"({' '.join(recorded)}); drop them, or start a new sweep."
        )
    added = [a for a in recorded if override_key(a) not in ours]
    print(f"mnist-cnn-train: resuming sweep {parent_id} with its overrides: {' '.join(added)}", file=sys.stderr)
    return argv + added  # after the flags: Hydra's parser takes the overrides as one trailing list


def _tracking_uri(argv: List[str]) -> str:
    """The store named on the command line, as the config would resolve it."""
    default = default_tracking_uri()
    given = [a.partition("=")[2] for a in argv[1:] if override_key(a) == "tracking.uri"]
    return given[-1] if given and not given[-1].startswith("${") else default


def _recorded_overrides(uri: str, parent_id: str, where: str) -> List[str]:
    from mnist_cnn.runner.restart import check_free  # MLflow takes seconds to import: only for a sweep being resumed
    from mnist_cnn.tracking import store  # MLflow, as above
    from mnist_cnn.tracking.lookup import find_run  # MLflow, as above

    parent = find_run(store.connect(uri, read_only=True), parent_id, where)
    if names.SWEEP_ARGV not in parent.data.tags:
        raise ConfigError(
            f"{where}: run {parent_id} is not the parent run of a sweep; give the id of one (mnist-cnn-runs lists "
            "them)."
        )
    check_free(parent, where, sweep=True)
    return json.loads(parent.data.tags[names.SWEEP_ARGV])
