"""The environment a run records: as tags, the checkout it ran from and the versions of what it used
most; as its `environment.txt` artifact, the version of every installed package."""

import functools
import platform
import re
import subprocess
from importlib.metadata import PackageNotFoundError, distributions, version
from pathlib import Path
from typing import Dict, List, Tuple

from mnist_cnn import names

PACKAGES = ("torch", "torchvision", "numpy", "mlflow", "hydra-core", "omegaconf")
VERSION = "version."  # + a package (or python): the tag of the version a run used


def environment_tags() -> Dict[str, str]:
    return dict(_environment())


@functools.lru_cache(maxsize=1)
def _environment() -> Tuple[Tuple[str, str], ...]:
    """environment_tags, read once per process (two git commands and the versions: 7 ms each job of
    a sweep would pay, docs/speed.md): a process runs the code it imported, whatever changes in the
    checkout or in pip meanwhile, so its first reading is the truer one."""
    commit, dirty = git_state()
    versions = {VERSION + k: v for k, v in package_versions().items()}
    return tuple({**versions, names.GIT_COMMIT: commit, names.GIT_DIRTY: str(dirty)}.items())


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


def installed_packages() -> Dict[str, str]:
    """{name: version} of every distribution this interpreter can import, names normalized as pip
    writes them (PEP 503: `hydra-core`, `pyyaml`)."""
    return dict(_scanned_packages())


@functools.lru_cache(maxsize=1)
def _scanned_packages() -> Tuple[Tuple[str, str], ...]:
    """The scan behind installed_packages, once per process (a tenth of a second, paid by each job of
    a sweep otherwise): what a process imported stays what it runs, whatever pip changes meanwhile."""
    found: Dict[str, str] = {}
    for dist in distributions():
        name = dist.metadata["Name"]
        if name:  # a leftover folder of a half-removed install has no metadata
            found.setdefault(canonical(name), dist.version)  # the first on sys.path wins, as import does
    return tuple(found.items())


def canonical(name: str) -> str:
    """A package's name as PEP 503 compares them: `PyYAML` and `pyyaml`, `typing_extensions` and `typing-extensions`."""
    return re.sub(r"[-_.]+", "-", name).lower()


def environment_text(packages: Dict[str, str]) -> str:
    """The lines of environment.txt: `name==version`, sorted (the format of `pip freeze` and of requirements.lock)."""
    return "".join(f"{name}=={packages[name]}\n" for name in sorted(packages))


def parse_environment(text: str) -> Dict[str, str]:
    """environment.txt's lines (or requirements.lock's, or `pip freeze`'s) back into {canonical name:
    version}; comments and lines that are not `name==version` are skipped."""
    pairs = (line.strip().partition("==") for line in text.splitlines())
    return {canonical(name): ver for name, sep, ver in pairs if sep and name and ver and not name.startswith("#")}


def differing_packages(theirs: Dict[str, str], here: Dict[str, str], whose: str = "run") -> List[str]:
    """The packages whose versions here differ from `theirs`, sorted: `numpy 2.3.1 (run: 2.2.0)`,
    with `not installed` on the side that lacks one."""
    missing = "not installed"
    return [
        f"{name} {here.get(name, missing)} ({whose}: {theirs.get(name, missing)})"
        for name in sorted(theirs.keys() | here.keys())
        if theirs.get(name) != here.get(name)
    ]
