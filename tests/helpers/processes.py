"""Running the commands as a user would: in a subprocess, from a folder of the test's own."""

import os
import subprocess
import sys
from pathlib import Path
from typing import Callable, Iterable, List, Optional

from tests.helpers.config import TINY
from tests.helpers.mlflow_store import free_port

TRAIN = [sys.executable, "-m", "mnist_cnn"]


def train_command(data_root: Path, uri: str, *overrides: str, multirun: bool = False) -> list:
    """`python -m mnist_cnn [-m]` on tiny data, with the fast settings the in-process tests use."""
    return [*TRAIN, *(["-m"] if multirun else []), f"data.root={data_root}", f"tracking.uri={uri}", *TINY, *overrides]


def torchrun(nproc: int, *args: str) -> list:
    """`torchrun --nproc_per_node=N -m mnist_cnn ARGS`, on a free port of its own."""
    launcher = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc_per_node={nproc}",
        f"--master_port={free_port()}",
    ]
    return [*launcher, "-m", "mnist_cnn", *args]


def ddp_command(nproc: int, root, uri: str, *overrides: str) -> list:
    """The tiny-data command of processes.train_command, under torchrun with trainer.strategy=ddp."""
    return torchrun(nproc, *train_command(root, uri, "trainer.strategy=ddp", *overrides)[len(TRAIN) :])


def run(
    command: Iterable[str], cwd: Path, timeout: float = 600, env: Optional[dict] = None
) -> subprocess.CompletedProcess:
    return subprocess.run(list(command), capture_output=True, text=True, cwd=cwd, timeout=timeout, env=_env(env))


def start(command: Iterable[str], cwd: Path, env: Optional[dict] = None) -> subprocess.Popen:
    """A process whose combined output the test reads line by line."""
    return subprocess.Popen(
        list(command), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=cwd, env=_env(env)
    )


def _env(extra: Optional[dict]) -> dict:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "MLFLOW_DISABLE_TELEMETRY": "true", **(extra or {})}


def run_main(main: Callable, argv: List[str], capsys) -> tuple:
    """(exit code, stdout, stderr) of a console command's main, run in this process."""
    try:
        main(argv)
        code = 0
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err
