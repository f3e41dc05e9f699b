"""`mnist-cnn-runs diff RUN_A RUN_B`: what two runs differ in, from their logged configs, tags and
metric histories; bad ids and runs without a config are one line, exit 2."""

import json
import re

import pytest
from mlflow import MlflowClient

from mnist_cnn.cli import runs
from mnist_cnn.runner import train
from mnist_cnn.tracking.compare import TIMINGS, Parting, parting

FAST = ("trainer.epochs=2", "trainer.limit_batches=2", "tracking.log_model=false")


def diff(argv, capsys):
    """(exit code, stdout, stderr) of `mnist-cnn-runs ARGV`."""
    capsys.readouterr()  # not what training printed before
    with pytest.raises(SystemExit) as e:
        runs.main(argv)
        raise SystemExit(0)
    said = capsys.readouterr()
    return e.value.code, said.out, said.err


def trained(tiny_cfg, tmp_path, *runs_overrides):
    """The run ids of one tiny run per list of overrides, in order."""
    return [
        train.run(tiny_cfg(*FAST, *overrides), tmp_path / str(i)).run_id for i, overrides in enumerate(runs_overrides)
    ]


@pytest.mark.slow  # trains two runs
def test_two_seeds_differ_in_seed_alone_among_config_keys(tiny_cfg, tmp_path, store_uri, capsys):
    a, b = trained(tiny_cfg, tmp_path, ["seed=1"], ["seed=2"])
    store = (tmp_path / "mlflow.db").read_bytes()
    code, out, err = diff(["diff", a, b, "--tracking-uri", store_uri, "--format", "json"], capsys)
    assert (code, err) == (0, "")
    found = json.loads(out)
    assert found["config"] == {"seed": {"a": 1, "b": 2}}
    assert set(found["fingerprints"]) == {"seed", "config_sha256", "weights_sha256"}  # same data, code, device
    assert found["runs"]["a"]["run_id"] == a and found["runs"]["b"]["run_id"] == b
    assert found["metrics"]["test_acc"]["a"] != found["metrics"]["test_acc"]["b"]
    assert found["histories"] == {
        "epochs": {"a": 2, "b": 2},
        "part_at_epoch": 1,
        "differing": ["val_acc", "val_loss", "train_acc", "train_loss"],  # lr is the same: no schedule
        "compared": ["val_acc", "val_loss", "train_acc", "train_loss", "lr"],
        "left_out": list(TIMINGS),
    }
    assert (tmp_path / "mlflow.db").read_bytes() == store  # a reading command writes nothing


@pytest.mark.slow  # trains two runs
def test_the_same_seed_never_parts_though_every_epochs_timings_differ(tiny_cfg, tmp_path, store_uri, capsys):
    a, b = trained(tiny_cfg, tmp_path, ["seed=3", "tracking.run_name=r0"], ["seed=3", "tracking.run_name=r1"])
    assert (
        MlflowClient(store_uri).get_run(a).data.metrics["epoch_time_s"]
        != (MlflowClient(store_uri).get_run(b).data.metrics["epoch_time_s"])
    )
    code, out, err = diff(["--tracking-uri", store_uri, "diff", a, b], capsys)  # the table; the URI before diff
    assert (code, err) == (0, "")
    assert out.startswith(f"A  {a}  r0  FINISHED\nB  {b}  r1  FINISHED\n")
    rows = [line.split() for line in out.splitlines()]
    assert "config keys that differ (1):" in out and ["tracking.run_name", "r0", "r1"] in rows  # where it reports
    assert "fingerprints: no difference" in out  # the same weights, data, code and versions
    assert "\nhistories: the same in all 2 epochs (compared: val_acc, val_loss, train_acc, train_loss, lr; " in out
    assert out.rstrip().endswith(
        "left out, as they differ between any two runs: epoch_time_s, val_time_s, samples_per_s)"
    )
    metric = next(row for row in rows if row[:1] == ["test_acc"])
    assert metric[1] == metric[2] and metric[3] == "0"  # side by side, and B-A


def test_histories_part_at_the_first_epoch_that_differs_or_that_one_run_lacks():
    one = {1: {"val_acc": 0.5, "lr": 0.1}, 2: {"val_acc": 0.6, "lr": 0.1}}
    assert parting(one, one) == Parting(None, [], (2, 2))
    assert parting(one, {**one, 2: {"val_acc": 0.7, "lr": 0.05}}) == Parting(2, ["val_acc", "lr"], (2, 2))
    assert parting(one, {1: one[1]}) == Parting(2, [], (2, 1))  # the shorter one stopped (pruned, early stopping)
    assert parting(one, {**one, 1: {"lr": 0.1}}) == Parting(1, ["val_acc"], (2, 2))  # logged by one run only
    assert Parting(2, [], (2, 1)).describe().startswith("histories part at epoch 2: A logged 2 epochs, B 1 (")


def test_an_unknown_run_id_is_one_line_exit_2(store_uri, capsys):
    bare = MlflowClient(store_uri).create_run("0").info.run_id
    code, out, err = diff(["diff", bare, "0123456789abcdef0123456789abcdef", "--tracking-uri", store_uri], capsys)
    assert (code, out) == (2, "")
    assert err == (
        "mnist-cnn-runs: RUN_B: no run 0123456789abcdef0123456789abcdef in this tracking store; "
        "check the id and the tracking URI.\n"
    )


def test_a_run_without_a_config_is_one_line_exit_2(store_uri, capsys):
    client = MlflowClient(store_uri)
    bare = client.create_run("0").info.run_id  # made by hand, as mnist-cnn-eval's evaluation runs are
    other = client.create_run("0").info.run_id
    code, out, err = diff(["diff", bare, other, "--tracking-uri", store_uri], capsys)
    assert (code, out) == (2, "")
    assert err == (
        f"mnist-cnn-runs: RUN_A: run {bare} has no config.yaml artifact; it was not made by mnist-cnn-train.\n"
    )


@pytest.mark.parametrize(
    "argv, named",
    [(["--top", "3"], "--top"), (["--format", "csv"], "--format csv"), (["--sweep", "x", "--group-seeds"], "--sweep")],
    ids=["top", "csv", "sweep"],
)
def test_an_option_of_the_runs_table_given_to_diff_is_named_exit_2(argv, named, capsys):
    code, out, err = diff([*argv, "diff", "a", "b"], capsys)
    assert (code, out) == (2, "")
    assert f"mnist-cnn-runs: error: {named}" in err and "not an option of diff" in err


def test_diff_of_a_sweeps_parent_names_it_and_what_to_give_instead_exit_2(store_uri, capsys):
    client = MlflowClient(store_uri)
    parent = client.create_run("0", tags={"sweep_argv": "[]"}).info.run_id
    other = client.create_run("0").info.run_id
    code, out, err = diff(["diff", parent, other, "--tracking-uri", store_uri], capsys)
    assert (code, out) == (2, "")
    assert err == (
        f"mnist-cnn-runs: RUN_A: run {parent} is a sweep's parent run, which trains no model itself; give the id of "
        f"one of its jobs (its child runs: mnist-cnn-runs --sweep {parent}).\n"
    )


@pytest.mark.slow  # trains two runs
def test_diff_shows_ints_as_ints_metrics_grouped_and_a_deleted_run_as_deleted(tiny_cfg, tmp_path, store_uri, capsys):
    a, b = trained(tiny_cfg, tmp_path, ["data.batch_size=50"], ["data.batch_size=64"])
    MlflowClient(store_uri).delete_run(b)
    code, out, err = diff(["diff", a, b, "--tracking-uri", store_uri], capsys)
    assert (code, err) == (0, "")
    assert f"B  {b}  " in out and out.splitlines()[1].endswith("  DELETED")
    assert re.search(r"data\.batch_size\s+50\s+64\n", out), out  # not 50.000 and 64.000
    sections = [line for line in out.splitlines() if line.startswith("final metrics")]
    assert sections == ["final metrics:", "final metrics, timings:", "final metrics, per class:"]
    headline = out[out.index("final metrics:") : out.index("final metrics, timings:")]
    timings = out[out.index("final metrics, timings:") : out.index("final metrics, per class:")]
    per_class = out[out.index("final metrics, per class:") :]
    assert "test_acc " in headline and "val_acc " in headline and "_s " not in headline and "class" not in headline
    assert "train_time_s" in timings and "epoch_time_s" in timings and "class" not in timings
    classes = re.findall(r"test_acc_class_(\d+)", per_class)
    assert classes == [str(k) for k in range(10)]  # by number: class_10 would come after class_9
    found = json.loads(diff(["diff", a, b, "--tracking-uri", store_uri, "--format", "json"], capsys)[1])
    assert found["runs"]["b"]["status"] == "DELETED" and found["config"]["data.batch_size"] == {"a": 50, "b": 64}
