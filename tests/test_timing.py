"""Where a run's wall time went: every phase logged, train_time_s the epochs with validation, and
both adding up over the processes of a resumed run; a start-up without the garbage collector."""

import gc
import time

import pytest
from mlflow import MlflowClient

from mnist_cnn import timing
from mnist_cnn.names import time_metric
from mnist_cnn.runner import train
from tests.helpers.interrupted import FAST, killed_in_epoch_2, resume
from tests.helpers.mlflow_store import only_run


def epoch_seconds(uri: str, run_id: str) -> float:
    """The sum over the run's logged epochs of epoch_time_s and val_time_s."""
    client = MlflowClient(uri)
    return sum(m.value for key in ("epoch_time_s", "val_time_s") for m in client.get_metric_history(run_id, key))


def test_a_run_logs_each_phase_of_its_wall_time_and_train_time_is_its_epochs(tiny_cfg, store_uri, tmp_path):
    final = train.run(tiny_cfg(*FAST), tmp_path / "out").metrics  # a job alone: its clock starts now
    metrics = only_run(store_uri).data.metrics
    phases = {p: metrics[time_metric(p)] for p in timing.PHASES}
    assert all(seconds >= 0 for seconds in phases.values()) and phases["startup"] > 0 and phases["test"] > 0
    assert sum(s for p, s in phases.items() if p != "total") <= phases["total"]  # disjoint phases within the whole
    assert metrics["train_time_s"] == pytest.approx(epoch_seconds(store_uri, only_run(store_uri).info.run_id))
    assert metrics["train_time_s"] == pytest.approx(phases["train"] + phases["val"])
    assert final[time_metric("total")] == phases["total"]


def test_a_resumed_runs_times_add_up_over_its_processes(tiny_cfg, store_uri, tmp_path):
    run_id = killed_in_epoch_2(tiny_cfg(*FAST), store_uri, tmp_path / "out")
    first = MlflowClient(store_uri).get_run(run_id).data.metrics  # epoch 1 only, from the first process
    time.sleep(0.2)  # the second process's clock starts later: only what each spent counts
    resume(tiny_cfg(), run_id)
    metrics = only_run(store_uri).data.metrics
    assert metrics["train_time_s"] == pytest.approx(epoch_seconds(store_uri, run_id))
    assert metrics["train_time_s"] > first["epoch_time_s"] + first["val_time_s"]  # epoch 1's seconds are in it
    assert metrics[time_metric("train")] + metrics[time_metric("val")] == pytest.approx(metrics["train_time_s"])


def test_the_first_job_counts_from_the_process_start_a_later_one_from_its_own():
    first = timing.JobClock.start(pays_imports=True)
    first.startup_done()  # the collector back on (the next test covers it)
    gc.unfreeze()
    assert time.time() - timing.Stopwatch(first).began == pytest.approx(timing.process_age(), abs=0.05)
    time.sleep(0.05)
    later = timing.JobClock.start(pays_imports=False)
    assert time.time() - timing.Stopwatch(later).began < 0.05  # this job's start, not the process's
    assert time.time() - timing.Stopwatch(timing.JobClock()).began < 0.05  # a job alone: from its clock's making


def test_the_first_job_starts_up_without_the_garbage_collector_and_freezes_what_it_made():
    frozen = gc.get_freeze_count()
    try:
        clock = timing.JobClock.start(pays_imports=True)
        assert not gc.isenabled()
        timing.Stopwatch(clock).first_step()
        assert gc.isenabled() and gc.get_freeze_count() > frozen
        timing.JobClock.start(pays_imports=False)  # a later job of the process: the collector stays on
        assert gc.isenabled()
    finally:
        gc.enable()
        gc.unfreeze()  # the test process's objects collectable again
