"""`mnist-cnn-verify RUN`: a finished run trained again from its logged config gives the same
epochs and weights; an altered fingerprint, another environment and bad input are named."""

import pytest
from mlflow import MlflowClient

from mnist_cnn.cli import verify
from mnist_cnn.runner import train
from tests.helpers.mlflow_store import all_runs, only_run

TWO_EPOCHS = ("trainer.epochs=2", "tracking.log_model=false")


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
def test_epochs_k_checks_the_first_k_epochs_and_record_keeps_the_rerun(finished, store_uri, capsys):
    code, out, _ = verified(capsys, store_uri, finished, "--epochs", "1")
    assert code == 0 and "again (1 epoch) in" in out and "epoch 1: the same" in out and "epoch 2" not in out
    assert "weights_sha256: not compared (--epochs checks the epochs' metrics only)" in out
    code, out, _ = verified(capsys, store_uri, finished, "--record")
    assert code == 0, out
    rerun = next(r for r in all_runs(store_uri) if r.info.run_id != finished)
    assert rerun.data.tags["verifies"] == finished and rerun.info.run_name.startswith("verify-")


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
