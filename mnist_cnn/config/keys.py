"""The one list of config keys that say where a run reads, writes and reports, not what it computes.

Two runs that differ only in these keys are the same experiment: `config_sha256` leaves them out,
run names skip them, and `resume=` accepts new values for them while refusing any other change.
A config's keys are written dotted, as overrides and a run's params name them (`flatten`).
"""

import hashlib
from typing import Any, Dict

from omegaconf import DictConfig, OmegaConf

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


def config_sha256(cfg: DictConfig) -> str:
    """SHA-256 of the resolved config without the RUN_SETTINGS: two runs with the same fingerprint
    are the same experiment. A run tags it as `config_sha256`; a resumed sweep finds a job's
    earlier run by it. `trainer.precision: null` is fingerprinted as null: what it resolved to is
    the run's `precision` tag, like the device."""
    tree = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    for key in RUN_SETTINGS:
        *parents, leaf = key.split(".")
        node = tree
        for parent in parents:
            node = node.get(parent, {})
        node.pop(leaf, None)
    return hashlib.sha256(OmegaConf.to_yaml(OmegaConf.create(tree), sort_keys=True).encode()).hexdigest()


def flatten(tree: Any, prefix: str = "") -> Dict[str, Any]:
    """{"model": {"layers": [{"type": "conv"}]}} -> {"model.layers.0.type": "conv"}; None values dropped."""
    if isinstance(tree, dict):
        items = tree.items()
    elif isinstance(tree, list):
        items = enumerate(tree)
    else:
        return {} if tree is None else {prefix: tree}
    out: Dict[str, Any] = {}
    for key, value in items:
        out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out
