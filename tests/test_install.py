"""A built wheel carries the whole config tree (conf/ and experiments/, from the top of the
repository) and runs from any folder; pyproject.toml lists every package; its dependencies include
what GPU system metrics need; the packages installed are requirements.lock's, which agrees with
pyproject.toml."""

import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path
from typing import List

import pytest
from packaging.requirements import Requirement

from mnist_cnn.tracking.environment import canonical, differing_packages, installed_packages, parse_environment

REPO = Path(__file__).parents[1]
LOCK = REPO / "requirements.lock"
PYPROJECT = tomllib.loads(REPO.joinpath("pyproject.toml").read_text())


def tree_files(conf: Path, experiments: Path) -> List[str]:
    """The config tree's files, named as in the repository."""
    return sorted(f"conf/{p.relative_to(conf).as_posix()}" for p in conf.rglob("*.yaml")) + sorted(
        f"experiments/{p.name}" for p in experiments.glob("*.yaml")
    )


def test_pyproject_lists_every_package_and_maps_the_tree_into_the_package():
    """The packages are listed, not found (the tree's folders sit outside mnist_cnn/): a new
    subpackage or config group missing from the list would be missing from the wheel."""
    inits = [*(REPO / "mnist_cnn").rglob("__init__.py"), *(REPO / "hydra_plugins").rglob("__init__.py")]
    code = [".".join(p.parent.relative_to(REPO).parts) for p in inits]
    groups = [".".join(p.relative_to(REPO).parts) for p in (REPO / "conf").rglob("*") if p.is_dir()]
    tree = ["mnist_cnn.conf", "mnist_cnn.experiments"] + [f"mnist_cnn.{group}" for group in groups]
    code.append("hydra_plugins")  # the namespace, no __init__.py: an editable install maps it to this folder
    setuptools = PYPROJECT["tool"]["setuptools"]
    assert sorted(setuptools["packages"]) == sorted(code + tree)
    assert setuptools["package-dir"] == {"mnist_cnn.conf": "conf", "mnist_cnn.experiments": "experiments"}


@pytest.mark.slow
def test_a_wheel_installed_in_a_fresh_environment_composes_presets_and_searches_from_any_folder(tmp_path):
    """`pip wheel .`, installed with pip in a new virtual environment outside the checkout (which
    reuses this environment's packages through a .pth file), then run from another folder without
    PYTHONPATH: `experiment=fast99` and `hparams_search=lr_batch` come from the wheel's own tree (and
    mnist-cnn-demo's page is in it)."""
    source, wheels, venv, elsewhere = (tmp_path / name for name in ("source", "wheels", "venv", "elsewhere"))
    elsewhere.mkdir()
    listed = ["git", "ls-files", "--cached", "--others", "--exclude-standard"]  # a copy: the build writes beside it
    for name in subprocess.run(listed, capture_output=True, text=True, cwd=REPO, check=True).stdout.splitlines():
        if (REPO / name).is_file():  # not a file deleted but not yet committed
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    build = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels), "."]
    built = subprocess.run(build, capture_output=True, text=True, cwd=source, timeout=600)
    assert built.returncode == 0, built.stderr[-2000:]
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], capture_output=True, text=True
    ).stdout.strip()
    Path(site, "heavy_packages.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")  # torch, Hydra, MLflow...
    (wheel,) = wheels.glob("*.whl")
    install = [python, "-m", "pip", "install", "-q", "--no-deps", "--ignore-installed", str(wheel)]
    installed = subprocess.run(install, capture_output=True, text=True, timeout=600)
    assert installed.returncode == 0, installed.stderr[-2000:]
    package = Path(site) / "mnist_cnn"
    assert tree_files(package / "conf", package / "experiments") == tree_files(REPO / "conf", REPO / "experiments")
    page = Path("mnist_cnn", "demo", "page.html")  # mnist-cnn-demo's page ships too
    assert (package.parent / page).read_bytes() == (REPO / page).read_bytes()

    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path)}  # no PYTHONPATH: the wheel's copy runs

    def train(*args: str) -> str:
        out = subprocess.run(
            ["mnist-cnn-train", *args], capture_output=True, text=True, cwd=elsewhere, env=env, timeout=300
        )
        assert out.returncode == 0, out.stderr[-2000:]
        return out.stdout

    where = subprocess.run(
        [python, "-c", "from mnist_cnn.config import tree; print(tree.CONF_DIR)"],
        capture_output=True,
        text=True,
        cwd=elsewhere,
        env=env,
    )
    assert where.stdout.strip() == str(package / "conf")  # the installed tree, not the checkout's
    job = train("experiment=fast99", "--cfg", "job")
    assert "name: fast99" in job and "run_name: fast99" in job and "label_smoothing: 0.1" in job
    search = train("hparams_search=lr_batch", "--cfg", "hydra")
    assert "n_trials: 12" in search and "optimizer.lr: tag(log, interval(1e-4, 1e-2))" in search
    assert "mnist-cnn-experiments://" + str(package / "experiments") in train("--info", "searchpath")


def test_system_metrics_reach_a_gpu_where_there_is_one():
    """tracking.system_metrics=true: MLflow's GPU monitor needs nvidia-ml-py and, without it, logs no
    GPU figure and says so only at DEBUG. It is a dependency (what `pip install` and the offline bundle
    read), so the monitor skips GPUs only where NVML finds none; test_gpu reads the figures on one."""
    assert "nvidia-ml-py" in PYPROJECT["project"]["dependencies"]
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
    project = PYPROJECT["project"]
    locked = parse_environment(LOCK.read_text())
    wanted = [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"]]
    missing = [r.name for r in wanted if canonical(r.name) not in locked]
    outside = [
        f"{r} (lock: {locked[canonical(r.name)]})"
        for r in wanted
        if r.name not in missing and not r.specifier.contains(locked[canonical(r.name)], prereleases=True)
    ]
    assert (missing, outside) == ([], []), "requirements.lock disagrees with pyproject.toml: run make lock"
