"""The README's ten-minute tour, run as written: every `$` command of its console blocks, in order,
in a fresh folder (so a fresh store), with fewer batches per epoch. Each must exit as the README
says (0 unless its comment says `exit N`) and print the lines shown under it, up to their first
number (the numbers depend on the machine and the batches). A `<name>` the README shows in an
output line is bound to the run id printed there and used by the commands after it."""

import re
import shlex
import shutil
import signal
import sys
import tomllib
from pathlib import Path

import pytest

from tests.helpers import processes

ROOT = Path(__file__).parents[1]
BIN = Path(sys.executable).parent  # the console scripts of the environment the tests run in
PLACEHOLDER = re.compile(r"<([a-z_]+)>")
RUN_ID = "([0-9a-f]{32})"
FEWER_BATCHES = "trainer.limit_batches=5"  # instead of the tour's 100, except where Ctrl-C needs time to land


def tour_steps(readme: str) -> list:
    """(command line, expected output lines) for each `$` line of the tour's console blocks."""
    start = readme.index("\n## A ten-minute tour\n")
    tour = readme[start : readme.index("\n## ", start + 1)]
    steps = []
    for block in re.findall(r"```console\n(.*?)```", tour, re.S):
        for line in block.splitlines():
            if line.startswith("$ "):
                steps.append((line[2:], []))
            else:
                steps[-1][1].append(line)
    return steps


def fill(text: str, ids: dict) -> str:
    def known(match):
        assert match.group(1) in ids, f"the tour uses {match.group(0)} before an output line names it"
        return ids[match.group(1)]

    return PLACEHOLDER.sub(known, text)


def check_output(expected: list, output: str, ids: dict) -> None:
    """Each shown line up to its first number is in the output (whitespace aside); a line that shows
    a `<name>` not yet known binds it to the run id printed in its place."""
    flat = " ".join(output.split())
    for line in (" ".join(line.split()) for line in expected):
        if not line or line.startswith("..."):
            continue
        new = [name for name in PLACEHOLDER.findall(line) if name not in ids]
        if new:
            before, _, after = line.partition(f"<{new[0]}>")
            pattern = re.escape(fill(before, ids)) + RUN_ID + re.escape(re.match(r" ?[^ ]*", after).group(0))
            found = re.search(pattern, flat)
            assert found, f"no line like {line!r} in:\n{output}"
            ids[new[0]] = found.group(1)
            continue
        shown = re.split(r"\d", fill(line, ids))[0]
        if len(shown) >= 4:
            assert shown in flat, f"{shown!r} (from {line!r}) not in:\n{output}"


def interrupted(command: list, cwd: Path) -> tuple:
    """Run `command`, press Ctrl-C (SIGINT) once its first epoch is logged: (exit code, output)."""
    process = processes.start(command, cwd)
    lines = []
    for line in process.stdout:
        lines.append(line)
        if re.search(r"epoch 1/\d+ ", line):
            process.send_signal(signal.SIGINT)
            break
    lines += process.stdout.readlines()
    return process.wait(timeout=600), "".join(lines)


@pytest.mark.slow
def test_the_readme_tour_runs_as_shown(real_root, tmp_path, monkeypatch):
    monkeypatch.setenv("MNIST_CNN_DATA_DIR", str(real_root))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # the tour's store: ./mlflow.db in the fresh folder
    (tmp_path / "docs" / "images").mkdir(parents=True)
    shutil.copy(ROOT / "docs" / "images" / "photo_of_a_2.jpg", tmp_path / "docs" / "images")
    steps = tour_steps((ROOT / "README.md").read_text(encoding="utf-8"))
    assert len(steps) >= 10, steps
    ids = {}
    for line, expected in steps:
        comment = line.partition(" # ")[2]
        command = shlex.split(fill(line, ids), comments=True)
        command[0] = str(BIN / command[0])
        exit_code = int(re.search(r"exit (\d+)", comment).group(1)) if "exit" in comment else 0
        if "Ctrl-C" in comment:
            code, output = interrupted(command, tmp_path)
        else:
            command = [re.sub(r"^trainer\.limit_batches=\d+$", FEWER_BATCHES, arg) for arg in command]
            result = processes.run(command, tmp_path)
            code, output = result.returncode, result.stdout + result.stderr
        assert code == exit_code, f"$ {line}\nexited {code}, the README says {exit_code}:\n{output[-4000:]}"
        check_output(expected, output, ids)


def test_the_tour_runs_only_real_commands_and_shows_each_run_id_before_using_it():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    shown = set()
    for line, expected in tour_steps((ROOT / "README.md").read_text(encoding="utf-8")):
        assert shlex.split(line, comments=True)[0] in scripts, line
        assert set(PLACEHOLDER.findall(line)) <= shown, f"{line}: uses a run id no output line above shows"
        shown |= set(PLACEHOLDER.findall("\n".join(expected)))


def test_shown_lines_match_up_to_their_first_number_and_bind_the_run_ids_they_show():
    run = "0a" * 16
    ids = {}
    shown = [
        "MLflow run <run_a> finished in experiment 'mnist' (...):",
        "...",
        "test  test_loss 0.1193  test_acc 0.9623",
    ]
    check_output(shown, f"[INFO] - test  test_loss 0.25  test_acc 0.91\nMLflow run {run} finished in x", ids)
    assert ids == {"run_a": run}
    with pytest.raises(AssertionError, match="'epoch ' .* not in"):
        check_output(["epoch 1/2  train_loss 0.55"], "test  test_loss 0.25", ids)
