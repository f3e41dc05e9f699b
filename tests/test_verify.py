"""`mnist-cnn-verify RUN`: a finished run trained again from its logged config gives the same
epochs and weights; an altered fingerprint, another environment and bad input are named."""

import importlib.metadata
import signal
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from mnist_cnn.cli import verify
from mnist_cnn.runner import train
from mnist_cnn.tracking import lookup
from mnist_cnn.tracking.environment import installed_packages
from tests.helpers import processes
from tests.helpers.mlflow_store import all_runs, only_run

TWO_EPOCHS = ("trainer.epochs=2", "tracking.log_model=false")
pytestmark = pytest.mark.usefixtures("signals_restored")  # verify routes Ctrl-C and SIGTERM to itself


def verified(capsys, uri: str, *args: str):
    """`mnist-cnn-verify ARGS` in process: (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as code:
        verify.main([*args, "--tracking-uri", uri])
    out = capsys.readouterr()
    return code.value.code, out.out, out.err


@pytest.fixture
def finished(tiny_cfg, store_uri, tmp_path) -> str:
    train.run(tiny_cfg(*TWO_EPOCHS), tmp_path / "out")
    return only_run(store_uri).info.run_id


@pytest.mark.slow
def test_a_fresh_run_verifies_epoch_by_epoch_and_its_weights_and_nothing_is_recorded(finished, store_uri, capsys):
    code, out, _ = verified(capsys, store_uri, finished)
    assert code == 0, out
    assert "packages: the same" in out and "versions as the run's" in out
    assert "epoch 1: the same train_loss, train_acc, lr, val_loss, val_acc" in out and "epoch 2: the same" in out
    weights = MlflowClient(store_uri).get_run(finished).data.tags["weights_sha256"]
    assert f"weights_sha256: the same ({weights})" in out
    assert [r.info.run_id for r in all_runs(store_uri)] == [finished]  # checked, not recorded


@pytest.mark.slow
def test_an_altered_weights_fingerprint_exits_1_naming_it(finished, store_uri, capsys):
    MlflowClient(store_uri).set_tag(finished, "weights_sha256", "0" * 64)
    code, out, _ = verified(capsys, store_uri, finished)
    assert code == 1 and f"weights_sha256 differs: {'0' * 64} logged, " in out


@pytest.mark.slow
def test_a_run_from_another_torch_version_is_compared_within_the_tolerance(finished, store_uri, capsys):
    client = MlflowClient(store_uri)
    client.set_tag(finished, "version.torch", "1.13.0")
    client.set_tag(finished, "weights_sha256", "0" * 64)  # not expected to match there: not compared
    code, out, _ = verified(capsys, store_uri, finished)
    assert code == 0, out
    assert "RUN was trained with another version.torch '1.13.0'" in out and "equality is not expected" in out
    assert "weights_sha256: not compared (another environment)" in out


@pytest.mark.slow
def test_a_package_whose_version_differs_from_the_runs_environment_txt_is_named(finished, store_uri, tmp_path, capsys):
    numpy = importlib.metadata.version("numpy")
    logged = MlflowClient(store_uri).download_artifacts(finished, "environment.txt", str(tmp_path))
    faked = Path(logged).read_text().replace(f"numpy=={numpy}\n", "numpy==0.0.1\n")
    MlflowClient(store_uri).log_text(finished, faked, "environment.txt")
    code, out, _ = verified(capsys, store_uri, finished)
    assert code == 0, out  # named, not a verdict: only torch, the host and the device change what is expected
    assert f"packages that differ from the run's: numpy {numpy} (run: 0.0.1)\n" in out


def test_the_package_line_names_each_difference_or_says_none_differ_or_that_the_run_logged_none():
    here = installed_packages()
    run = {**here, "numpy": "0.0.1", "gone": "1.0"}
    del run["torch"]
    assert verify.package_differences(run, "abc") == (
        "packages that differ from the run's: gone not installed (run: 1.0), "
        f"numpy {here['numpy']} (run: 0.0.1), torch {here['torch']} (run: not installed)"
    )
    assert verify.package_differences(dict(here), "abc") == f"packages: the same {len(here)} versions as the run's"
    assert verify.package_differences(None, "abc") == (
        "run abc has no environment.txt (it predates them): package versions not compared"
    )


def test_a_run_that_logged_no_environment_txt_has_none_to_compare(store_uri, tmp_path):
    client = MlflowClient(store_uri)
    run_id = client.create_run("0").info.run_id
    assert lookup.run_environment(client, run_id, str(tmp_path)) is None
    client.log_text(run_id, "numpy==2.0.0\nnot a line\n", "environment.txt")
    assert lookup.run_environment(client, run_id, str(tmp_path)) == {"numpy": "2.0.0"}


@pytest.mark.slow
def test_epochs_k_checks_the_first_k_epochs_and_record_keeps_the_rerun(finished, store_uri, capsys):
    code, out, _ = verified(capsys, store_uri, finished, "--epochs", "1")
    assert code == 0 and "again (1 epoch) in" in out and "epoch 1: the same" in out and "epoch 2" not in out
    assert "weights_sha256: not compared (--epochs checks the epochs' metrics only)" in out
    code, out, _ = verified(capsys, store_uri, finished, "--record")
    assert code == 0, out
    rerun = next(r for r in all_runs(store_uri) if r.info.run_id != finished)
    assert rerun.data.tags["verifies"] == finished and rerun.info.run_name.startswith("verify-")
    # the same experiment: it trains in the precision the run resolved without pinning it in its config
    original = MlflowClient(store_uri).get_run(finished).data.tags
    assert rerun.data.tags["config_sha256"] == original["config_sha256"]
    assert rerun.data.tags["precision"] == original["precision"]


@pytest.mark.slow
def test_bad_input_is_one_line_exit_2(tiny_cfg, store_uri, tmp_path, capsys, monkeypatch):
    train.run(tiny_cfg("trainer.epochs=1", "tracking.log_model=false"), tmp_path / "out")
    run_id = only_run(store_uri).info.run_id
    MlflowClient(store_uri).set_terminated(run_id, "KILLED")
    cases = [
        (["0123456789abcdef0123456789abcdef"], "RUN: no run 0123456789abcdef0123456789abcdef in this tracking store"),
        ([run_id], f"run {run_id} is STOPPED: verify a FINISHED run (finish it first with mnist-cnn-train resume="),
        ([run_id, "--epochs", "0"], "--epochs 0: give 1 or more"),
        ([run_id, "--epochs", "1", "--record"], "--record keeps a whole rerun: drop --epochs."),
    ]
    for args, message in cases:
        code, out, err = verified(capsys, store_uri, *args)
        assert code == 2 and err.startswith("mnist-cnn-verify: ") and message in err, err
        assert len(err.strip().splitlines()) == 1
    MlflowClient(store_uri).set_terminated(run_id, "FINISHED")
    code, _, err = verified(capsys, store_uri, run_id, "--data-root", str(tmp_path / "nowhere"))
    assert (
        code == 2 and f"--data-root {tmp_path / 'nowhere'}: no such folder; give the folder that holds mnist's" in err
    )


@pytest.mark.slow
def test_runs_that_kept_their_best_epochs_or_had_a_pruner_verify_and_a_pruned_one_to_its_epoch(
    tiny_cfg, store_uri, tmp_path, capsys
):
    """trainer.keep_best and a pruner need the store, which an unrecorded rerun does not use: they are
    not what the run computed, and verify leaves them out. A job its sweep pruned is trained again
    up to that epoch (its weights not compared: it logged none), but not recorded."""
    for i, overrides in enumerate([("trainer.keep_best=1",), ("objective.pruner=median",)]):
        run_id = train.run(tiny_cfg(*TWO_EPOCHS, *overrides), tmp_path / str(i)).run_id
        code, out, err = verified(capsys, store_uri, run_id)
        assert code == 0 and "weights_sha256: the same" in out, err
    client = MlflowClient(store_uri)
    client.set_tag(run_id, "pruned_at_epoch", "1")
    client.set_terminated(run_id, "KILLED")
    code, out, err = verified(capsys, store_uri, run_id)
    assert code == 0 and "again (1 epoch)" in out and "epoch 1: the same" in out and "epoch 2" not in out, err
    assert "weights_sha256: not compared (a pruned run has no final weights)" in out
    code, _, err = verified(capsys, store_uri, run_id, "--record")
    assert code == 2 and err == (
        f"mnist-cnn-verify: run {run_id} was pruned by its sweep after epoch 1: verify checks those 1 epochs "
        "without --record (a recorded rerun is a whole run); drop --record.\n"
    )


@pytest.mark.parametrize("tolerance", ["-1", "nan", "inf"])
def test_a_tolerance_below_0_or_not_a_number_is_one_line_exit_2_before_anything_loads(tolerance, capsys):
    with pytest.raises(SystemExit) as code:
        verify.main(["0123456789abcdef0123456789abcdef", "--tolerance", tolerance, "--tracking-uri", "/nowhere/x.db"])
    err = capsys.readouterr().err
    assert code.value.code == 2 and err == (
        f"mnist-cnn-verify: --tolerance {float(tolerance):g}: give a relative difference of 0 or more (the default "
        "1e-3 is 0.1%).\n"
    )


def test_help_says_what_verify_does_in_whole_sentences_and_names_record(capsys):
    with pytest.raises(SystemExit):
        verify.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "train a finished run again from the config it logged, and check that the same numbers come out." in text
    assert "(`--record`: as a new run in the same store, tagged `verifies`)" in text


@pytest.mark.slow  # a process trained until the signal comes
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_during_the_rerun_exits_130_naming_it_and_leaves_no_scratch_folder(
    signum, tiny_cfg, tiny_root, store_uri, tmp_path, monkeypatch
):
    run_id = train.run(tiny_cfg("trainer.epochs=12", "tracking.log_model=false"), tmp_path / "out").run_id
    monkeypatch.setenv("TMPDIR", str(tmp_path / "scratch"))  # where the rerun's scratch folder goes
    (tmp_path / "scratch").mkdir()
    command = [sys.executable, "-m", "mnist_cnn.cli.verify", run_id, "--tracking-uri", store_uri]
    process = processes.start(command, tmp_path)
    deadline = time.monotonic() + 120
    while not list((tmp_path / "scratch").glob("*/rerun/checkpoints/last.pt")):  # an epoch done: training
        assert process.poll() is None and time.monotonic() < deadline, process.stdout.read()
        time.sleep(0.2)
    process.send_signal(signum)
    said = process.stdout.read()
    assert process.wait(timeout=60) == 130, said
    name = "SIGTERM" if signum == signal.SIGTERM else "SIGINT"
    assert f"{name}: stopping at the next step" in said
    assert "mnist-cnn-verify: stopped by Ctrl-C or SIGTERM; nothing compared, scratch folder deleted." in said
    assert "resume=" not in said and "Traceback" not in said
    assert not list((tmp_path / "scratch").iterdir())  # the scratch folder is gone


def test_a_sweeps_parent_is_named_with_what_to_give_instead_exit_2(store_uri, capsys):
    client = MlflowClient(store_uri)
    parent = client.create_run("0", tags={"sweep_argv": "[]"}).info.run_id
    client.set_terminated(parent, "FINISHED")
    code, out, err = verified(capsys, store_uri, parent)
    assert (code, out) == (2, "") and err == (
        f"mnist-cnn-verify: RUN: run {parent} is a sweep's parent run, which trains no model itself; give the id of "
        f"one of its jobs (its child runs: mnist-cnn-runs --sweep {parent}).\n"
    )
