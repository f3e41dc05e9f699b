"""A regular (non-editable) install carries its whole config tree, presets and search spaces
included, and runs from any folder; its dependencies include what GPU system metrics need; the
packages installed are requirements.lock's, which agrees with pyproject.toml."""

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from mnist_cnn.tracking.environment import canonical, differing_packages, installed_packages, parse_environment

REPO = Path(__file__).parents[1]
LOCK = REPO / "requirements.lock"


@pytest.mark.slow
def test_installed_package_finds_configs_and_presets_from_any_folder(tmp_path):
    site = tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(REPO)]
    built = subprocess.run(pip, capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr[-2000:]
    shipped = sorted(
        p.relative_to(REPO / "mnist_cnn").as_posix() for p in (REPO / "mnist_cnn" / "conf").rglob("*.yaml")
    )
    installed = sorted(
        p.relative_to(site / "mnist_cnn").as_posix() for p in (site / "mnist_cnn" / "conf").rglob("*.yaml")
    )
    assert installed == shipped and "conf/experiment/seed_tutorial.yaml" in installed  # every group, presets included

    code = (
        "import mnist_cnn, sys; print(mnist_cnn.__file__); sys.argv[1:] = ['--cfg', 'job', "
        "'experiment=seed_tutorial']; "
        "from mnist_cnn.cli.train import main; main()"
    )
    env = {"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith(str(site))  # the installed copy ran, not the checkout
    assert "seed: 777" in out.stdout and "name: seed_cnn" in out.stdout


def test_system_metrics_reach_a_gpu_where_there_is_one():
    """tracking.system_metrics=true: MLflow's GPU monitor needs nvidia-ml-py and, without it, logs no
    GPU figure and says so only at DEBUG. It is a dependency (what `pip install` and the offline bundle
    read), so the monitor skips GPUs only where NVML finds none; test_gpu reads the figures on one."""
    assert "nvidia-ml-py" in tomllib.loads(REPO.joinpath("pyproject.toml").read_text())["project"]["dependencies"]
    from mlflow.system_metrics.metrics.gpu_monitor import GPUMonitor  # imports pynvml: ImportError without it

    try:
        GPUMonitor()
    except RuntimeError as e:  # no NVIDIA driver here: NVML's answer, not a missing package
        assert "Failed to initialize NVML" in str(e)


def test_the_installed_packages_are_the_locks_versions_nothing_more_nothing_less():
    """`make install` (and so CI) installs from requirements.lock: the suite runs with exactly the
    versions it names, pip and setuptools included, as `pip freeze --all` (the project itself aside)
    would list them."""
    here = {name: v for name, v in installed_packages().items() if name != "mnist-cnn"}  # the project itself
    differ = differing_packages(parse_environment(LOCK.read_text()), here, whose="lock")
    assert not differ, (
        f"installed packages differ from requirements.lock (make install; make lock to refresh): {differ}"
    )


def test_the_lock_pins_every_dependency_pyproject_names_at_a_version_it_allows():
    project = tomllib.loads(REPO.joinpath("pyproject.toml").read_text())["project"]
    locked = parse_environment(LOCK.read_text())
    wanted = [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"]]
    missing = [r.name for r in wanted if canonical(r.name) not in locked]
    outside = [
        f"{r} (lock: {locked[canonical(r.name)]})"
        for r in wanted
        if r.name not in missing and not r.specifier.contains(locked[canonical(r.name)], prereleases=True)
    ]
    assert (missing, outside) == ([], []), "requirements.lock disagrees with pyproject.toml: run make lock"
