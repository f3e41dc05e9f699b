"""Run names that tell runs apart: made from the overrides that change the result (no MLflow here)."""

from typing import List, Optional

from mnist_cnn.config.keys import is_run_setting, override_key

ALIASES = {"batch_size": "bs", "out_channels": "ch", "kernel_size": "k", "weight_decay": "wd", "out_features": "out"}


def run_name(overrides: List[str], only: Optional[List[str]] = None) -> Optional[str]:
    """A short name from the overrides that change what is trained (or just the keys in `only`),
    e.g. `lr=0.003,bs=256`."""
    parts = []
    for override in overrides:
        key, value = override_key(override), override.partition("=")[2]
        if (key in only) if only else not is_run_setting(key):
            *path, leaf = key.split(".")
            layer = f"l{path[-1]}." if path and path[-1].isdigit() else ""
            parts.append(f"{layer}{ALIASES.get(leaf, leaf)}={_short(value)}")
    return ",".join(parts) or None


def _short(value: str) -> str:
    """0.0024713734184878826 -> 0.002471: Optuna's samples, readable in a run list."""
    try:
        return value if "." not in value and "e" not in value.lower() else f"{float(value):.4g}"
    except ValueError:
        return value
