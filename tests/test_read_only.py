"""Commands that only read never write: `mnist-cnn-runs` and `mnist-cnn-predict` open a store
read-only, and they and `mnist-cnn-eval` never create, migrate or lock one, nor a data folder."""

import shutil
import sqlite3
import subprocess

import numpy as np
import pytest
from PIL import Image

from mnist_cnn.cli import eval as eval_cli
from mnist_cnn.cli import predict, runs
from mnist_cnn.runner import train
from tests.helpers.mlflow_store import only_run

COMMANDS = {
    "runs": lambda uri: runs.main(["--tracking-uri", uri]),
    "eval": lambda uri: eval_cli.main(["0123456789abcdef0123456789abcdef", "--tracking-uri", uri]),
    "predict": lambda uri: predict.main(["--model", "models:/digits/1", "--tracking-uri", uri, "x.png"]),
}


def exit_code(call, capsys):
    with pytest.raises(SystemExit) as e:
        call()
        raise SystemExit(0)
    return e.value.code, capsys.readouterr()


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("content", [b"", b"a sqlite file of another program"], ids=["empty", "not-mlflow"])
def test_a_file_that_is_not_an_mlflow_store_is_named_and_left_as_it_was(
    tmp_path, monkeypatch, capsys, command, content
):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "runs.db"
    if content:
        with sqlite3.connect(path) as db:
            db.execute("CREATE TABLE notes (text)")
    else:
        path.write_bytes(b"")
    before = path.read_bytes()
    code, said = exit_code(lambda: COMMANDS[command](f"sqlite:///{path}"), capsys)
    what = "an empty file" if not content else "a database without MLflow's tables"
    assert code == 2
    assert f"{path} is {what}, not an MLflow store; commands that read runs never create one." in said.err
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["runs.db"]  # no .lock


@pytest.fixture
def read_only_disk(tmp_path):
    """A real file system mounted read-only (a tmpfs remounted; needs root, as CI and this machine have)."""
    folder = tmp_path / "disk"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode:
        pytest.skip(f"mounting a tmpfs needs root: {mounted.stderr.decode().strip()}")
    yield folder
    subprocess.run(["umount", "--lazy", str(folder)], check=True)


def test_a_store_on_a_read_only_disk_can_be_listed_and_predicted_from(
    tiny_cfg, store_uri, tmp_path, read_only_disk, capsys
):
    train.run(tiny_cfg("tracking.register_as=digits"), tmp_path / "out")
    run = only_run(store_uri)
    shutil.copy(tmp_path / "mlflow.db", read_only_disk / "mlflow.db")
    subprocess.run(["mount", "-o", "remount,ro", str(read_only_disk)], check=True)
    uri = f"sqlite:///{read_only_disk}/mlflow.db"
    capsys.readouterr()

    code, said = exit_code(lambda: runs.main(["--tracking-uri", uri, "--format", "csv"]), capsys)
    assert code == 0 and run.info.run_id in said.out, said.err

    picture, pixels = tmp_path / "stroke.png", np.zeros((28, 28), dtype=np.uint8)
    pixels[6:22, 12:16] = 255  # a light stroke on a dark ground, like a 1
    Image.fromarray(pixels).save(picture)
    code, said = exit_code(
        lambda: predict.main(["--model", "models:/digits/1", "--tracking-uri", uri, str(picture)]), capsys
    )
    assert code == 0 and str(picture) in said.out, said.err
    assert sorted(p.name for p in read_only_disk.iterdir()) == ["mlflow.db"]


def test_eval_with_a_data_root_that_does_not_exist_names_it_and_makes_no_folder(tiny_cfg, store_uri, tmp_path, capsys):
    train.run(tiny_cfg(), tmp_path / "out")
    run = only_run(store_uri)
    missing = tmp_path / "no" / "such" / "folder"
    call = lambda: eval_cli.main([run.info.run_id, "--tracking-uri", store_uri, "--data-root", str(missing)])  # noqa: E731
    code, said = exit_code(call, capsys)
    assert code == 2 and said.err == (
        f"mnist-cnn-eval: --data-root {missing}: no such folder; give the folder that holds mnist's files.\n"
    )
    assert not (tmp_path / "no").exists()
