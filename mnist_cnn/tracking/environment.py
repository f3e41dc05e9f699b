"""The environment a run records as tags: the checkout it ran from and the versions of what it used."""

import platform
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Dict, Tuple

from mnist_cnn import names

PACKAGES = ("torch", "torchvision", "numpy", "mlflow", "hydra-core", "omegaconf")
VERSION = "version."  # + a package (or python): the tag of the version a run used


def environment_tags() -> Dict[str, str]:
    commit, dirty = git_state()
    versions = {VERSION + k: v for k, v in package_versions().items()}
    return {**versions, names.GIT_COMMIT: commit, names.GIT_DIRTY: str(dirty)}


def git_state() -> Tuple[str, bool]:
    """(commit, dirty) of the checkout this package runs from; ("unknown", False) outside one."""
    here = Path(__file__).parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        status = subprocess.run(["git", "status", "--porcelain"], cwd=here, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown", False
    if commit.returncode != 0:
        return "unknown", False
    return commit.stdout.strip(), bool(status.stdout.strip())


def package_versions() -> Dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = "not installed"
    return versions
