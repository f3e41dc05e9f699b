"""The one list of config keys that say where a run reads, writes and reports, not what it computes.

Two runs that differ only in these keys are the same experiment: `config_sha256` leaves them out,
run names skip them, and `resume=` accepts new values for them while refusing any other change.
"""

from typing import Iterable, List

RUN_SETTINGS = (
    "data.root",  # where the files are
    "data.download",  # whether missing files may be fetched
    "data.verify_checksums",  # data_sha256 fingerprints the data either way
    "trainer.progress",
    "trainer.device",  # tagged as `device`; bit-for-bit equality needs the same device
    "trainer.keep_best",  # which epochs are kept as models, not what they are
    "tracking",  # where and how the run is recorded
    "resume",
    "resume_sweep",
)
# Command-line overrides that configure Hydra (launcher, sweeper, search space), not the run.
HYDRA_SETTINGS = ("hydra", "hparams_search")


def override_key(override: str) -> str:
    """`+optimizer.lr=0.1` -> `optimizer.lr`; `hydra/launcher=joblib` -> `hydra.launcher`."""
    return override.lstrip("+~").partition("=")[0].replace("/", ".")


def is_run_setting(key: str) -> bool:
    """True for a key (or command-line override key) that does not change what a run computes."""
    return any(key == s or key.startswith(s + ".") for s in RUN_SETTINGS + HYDRA_SETTINGS)


def result_overrides(overrides: Iterable[str]) -> List[str]:
    """The overrides among `overrides` that change what a run computes."""
    return [o for o in overrides if not is_run_setting(override_key(o))]
