"""The benchmark scripts run as docs/speed.md shows them and print the figures it quotes."""

import re
import sys
from pathlib import Path

import pytest

from mnist_cnn.engine import graphs
from tests.helpers import processes
from tests.helpers.config import make_cfg
from tests.helpers.cuda import GRAPHED, CudaOnTheCpu, captured_on_the_cpu

ROOT = Path(__file__).parents[1]
SPEED = [sys.executable, str(ROOT / "benchmarks" / "train_speed.py")]


@pytest.mark.slow
def test_train_speed_prints_both_loops_and_their_ratio(real_root, tmp_path):
    result = processes.run(
        [*SPEED, "--data-root", str(real_root), "--steps", "3", "--rounds", "2", "--precision", "fp32"], tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert re.search(r"\(a\) tutorial loop .* ms/step +ratio 1\.00", result.stdout)
    ratio = re.search(r"\(b\) mnist_cnn loop, fp32 +[\d.]+ ms/step +ratio b/a ([\d.]+)", result.stdout)
    assert ratio and float(ratio.group(1)) > 0, result.stdout


@pytest.mark.slow
def test_fast99_reaches_99_percent_in_one_epoch(real_root, tmp_path):
    """fast99 (one epoch) reaches 99% on seed 2; the tutorial loop is measured in the same run, here
    for one epoch only (its 99% takes several), so the ratio is stated as a lower bound."""
    assert make_cfg(["experiment=fast99"]).trainer.epochs == 1
    command = [*SPEED, "--data-root", str(real_root), "--fast99", "--seeds", "2", "--tutorial-max-epochs", "1"]
    result = processes.run(command, tmp_path)
    assert result.returncode == 0, result.stderr
    epoch = re.search(r"\(a\) tutorial loop: epoch  1 +[\d.]+ s, test_acc (0\.\d{4})\n", result.stdout)
    assert epoch and float(epoch.group(1)) < 0.99, result.stdout
    assert re.search(
        r"\(a\) tutorial loop: did not reach 99\.0% test accuracy in 1 epoch: [\d.]+ s of training \(scoring not "
        r"counted\)\n",
        result.stdout,
    ), result.stdout
    acc = re.search(r"fast99 seed 2: train_time_s +[\d.]+ +test_acc ([\d.]+)", result.stdout)
    assert acc and float(acc.group(1)) >= 0.99, result.stdout
    assert re.search(
        r"fast99: median train_time_s [\d.]+, mean test_acc [\d.]+, time to 99% more than [\d.]+x faster than the "
        r"tutorial loop \(it did not reach 99\.0% in 1 epoch\)\n",
        result.stdout,
    ), result.stdout


@pytest.mark.slow
def test_gpu_check_says_so_without_a_gpu(tmp_path):
    env = {"PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": ""}
    result = processes.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), str(tmp_path)], tmp_path, env=env)
    assert result.returncode == 2
    assert "torch sees no CUDA GPU here" in result.stderr and "run it on a GPU machine" in result.stderr


def test_gpu_check_runs_the_gpu_tests_first_and_every_section_whatever_the_others_did(tmp_path):
    """With a stand-in for Python that fails the gpu tests and section 3: each section still runs and
    says pass or FAIL, and the script exits 1 at the end naming the sections that failed."""
    calls = tmp_path / "calls.txt"
    python = tmp_path / "python"
    python.write_text(
        '#!/usr/bin/env bash\necho "$*" >> "$CALLS"\ncase "$*" in "-m pytest"*) exit 1;; *best_gpu*) exit 3;; esac\n'
    )
    python.chmod(0o755)
    env = {"PYTHON": str(python), "CALLS": str(calls)}
    result = processes.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), str(tmp_path)], tmp_path, env=env)
    assert result.returncode == 1, result.stdout + result.stderr
    verdicts = re.findall(r"== section (\d): (pass|FAIL \(exit \d\))", result.stdout)
    assert verdicts == [
        ("0", "FAIL (exit 1)"),
        ("1", "pass"),
        ("2", "pass"),
        ("3", "FAIL (exit 3)"),
        ("4", "pass"),
        ("5", "pass"),
    ], result.stdout
    called = calls.read_text().splitlines()[2:]  # after the check for a GPU and the GPU's name
    assert called[0].startswith("-m pytest -m gpu") and sum("run_overhead.py" in c for c in called) == 2
    assert "gpu_check: sections 0 3 failed" in result.stderr


@pytest.mark.slow
def test_run_overhead_prints_the_wall_times_beside_the_logged_phases(tiny_root, tmp_path):
    command = [
        sys.executable,
        str(ROOT / "benchmarks" / "run_overhead.py"),
        "--data-root",
        str(tiny_root),
        "--repeats",
        "1",
        "--jobs",
        "2",
        "data.verify_checksums=false",
        "data.val_size=100",
    ]
    result = processes.run(command, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(
        r"1-batch run, tracked: wall [\d.]+ s \(median of [\d.]+; the first, which created the store, [\d.]+ s\)",
        result.stdout,
    )
    assert re.search(r"where the last one's time went: startup [\d.]+ .* total [\d.]+", result.stdout)
    walls = r"sweep of 2 1-batch jobs: wall [\d.]+ s \(median of [\d.]+\); of 1 job: [\d.]+ s \(median of [\d.]+\)"
    assert re.search(walls, result.stdout), result.stdout
    assert re.search(r"each extra job: -?[\d.]+ s, of which its own work .* -?[\d.]+ s beyond it", result.stdout), (
        result.stdout
    )


@pytest.mark.slow
def test_sweep_throughput_prints_both_searches_the_fixed_costs_and_the_per_job_cost(tiny_root, tmp_path):
    command = [
        sys.executable,
        str(ROOT / "benchmarks" / "sweep_throughput.py"),
        "--data-root",
        str(tiny_root),
        "--batches",
        "2,4",
        "--seeds",
        "1",
        "--jobs",
        "2",
        "--repeats",
        "1",
        "--skip-cores",
        "data.verify_checksums=false",
        "data.val_size=100",
    ]
    result = processes.run(command, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    for mode in ("blocking \\(asynchronous=false\\)", "asynchronous"):
        line = rf"  {mode} +wall +[\d.]+ s, jobs busy +[\d.]+ s, occupancy [\d.]+, "
        line += r"startup [\d.]+ s, report [\d.]+ s \(2 trials\)"
        assert re.search(line, result.stdout), result.stdout
    assert re.search(r"asynchronous / blocking: [\d.]+x the wall time, occupancy [+-][\d.]+", result.stdout)
    assert re.search(r"each extra job -?[\d.]+ s, of which its own training and test pass [\d.]+ s", result.stdout)
    gpu = "GPU: trials a minute of experiment=fast99_gpu"
    assert gpu in result.stdout and ("needs a CUDA GPU" in result.stdout or "against" in result.stdout)


@pytest.mark.slow
def test_figure_times_prints_each_figure_and_the_used_frames_ratio(tmp_path):
    result = processes.run([sys.executable, str(ROOT / "benchmarks" / "figure_times.py"), "--repeats", "2"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert re.search(r"frame used before \(each later run\) +[\d.]+ ms +ratio [\d.]+\n", result.stdout), result.stdout
    for figure in (
        "new frame \\(a process's first run\\)",
        "most confident mistakes",
        "learning curves",
        "all three, as a later run draws them",
    ):
        assert re.search(figure + r" +[\d.]+ ms", result.stdout), result.stdout


@pytest.mark.slow
def test_demo_latency_prints_the_client_and_server_times_of_a_drawing(digits_model, tmp_path):
    command = [sys.executable, str(ROOT / "benchmarks" / "demo_latency.py"), "models:/digits@champion"]
    result = processes.run(
        [*command, digits_model["run_id"], "--tracking-uri", digits_model["uri"], "--repeats", "5"], tmp_path
    )
    assert result.returncode == 0, result.stderr
    for line in ("whole request \\(client\\)", "server: picture read, models run"):
        assert re.search(line + r": median [\d.]+ ms, 95th percentile [\d.]+ ms\n", result.stdout), result.stdout
    assert "2 models, 5 answers of a 280x280 drawing" in result.stdout


def test_train_speed_times_replays_only_its_warm_up_holds_the_capture(tiny_cfg, monkeypatch):
    """side_by_side's warm-up runs engine.graphs' eager warm-up steps and the capture (torch.cuda
    stood in for on the CPU): each step of the timed rounds is a replay of the one captured graph,
    with no eager step and no capture among them."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import train_speed

    cuda = CudaOnTheCpu(monkeypatch)
    state, settings = captured_on_the_cpu(tiny_cfg(*GRAPHED, "data.batch_size=25"), cuda)
    steps, calls = train_speed.loop_steps(state, settings), []

    def counted(n: int) -> None:  # each call's steps, with the replays and the graphs it added
        replays, made = sum(g.replays for g in cuda.graphs), len(cuda.graphs)
        steps(n)
        calls.append((n, sum(g.replays for g in cuda.graphs) - replays, len(cuda.graphs) - made))

    train_speed.side_by_side({"mnist_cnn": counted}, steps=4, rounds=2)
    assert calls[0] == (train_speed.WARMUP, train_speed.WARMUP - graphs.WARMUP, 1)  # the capture's batch replays too
    assert calls[1:] == [(4, 4, 0), (4, 4, 0)]
