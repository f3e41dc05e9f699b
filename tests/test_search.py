"""The Optuna sweeper's parts that need no process: Hydra's search syntax as Optuna distributions,
the samplers' typed options, and a sampler's random state carried over to a resumed sweep."""

import signal
import sys

import optuna
import pytest
import requests
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate
from mlflow import MlflowClient
from omegaconf import OmegaConf
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from mnist_cnn.cli import runs
from mnist_cnn.config.search import SAMPLERS, sampler_problem
from mnist_cnn.runner import train
from mnist_cnn.sweep.search import _told_as_before, search_space
from mnist_cnn.sweep.study import PARENT, RUN, sampler
from tests.helpers import processes
from tests.helpers.mlflow_store import free_port, only_run
from tests.helpers.mlflow_store import runs as runs_in


def test_hydras_search_syntax_becomes_optunas_distributions():
    space, fixed = search_space(
        {
            "optimizer.lr": "tag(log, interval(1e-4, 1e-2))",
            "trainer.label_smoothing": "interval(0.0, 0.2)",
            "data.batch_size": "choice(64, 128, 256)",
            "trainer.epochs": "range(1, 9, 2)",
            "seed": "range(0.5, 2.0, 0.5)",
        },
        ["data.batch_size=32", "optimizer=sgd,adam"],
    )
    assert space == {
        "optimizer.lr": FloatDistribution(1e-4, 1e-2, log=True),
        "trainer.label_smoothing": FloatDistribution(0.0, 0.2),
        "trainer.epochs": IntDistribution(1, 7, step=2),  # Python's range: 1, 3, 5, 7
        "seed": CategoricalDistribution([0.5, 1.0, 1.5]),
        "optimizer": CategoricalDistribution(["sgd", "adam"]),
    }
    assert fixed == ["data.batch_size=32"]  # a single value on the command line wins over the search


@pytest.mark.parametrize("name", SAMPLERS)
def test_every_sampler_schema_builds_its_optuna_sampler(name):
    options = OmegaConf.structured(SAMPLERS[name](seed=3))
    extra = {"search_space": {"a": [1, 2]}} if name == "grid" else {}
    sampler = instantiate(options, **extra)
    assert type(sampler).__name__ == options._target_.rsplit(".", 1)[-1]


def test_an_option_a_sampler_does_not_have_is_refused_at_compose():
    from mnist_cnn.config import tree

    with pytest.raises(ConfigCompositionException) as error:
        tree.compose(["hparams_search=lr_batch", "hydra.sweeper.sampler.population_size=10"])
    assert "population_size" in str(error.value)


@pytest.mark.parametrize("name", ["tpe", "random", "cmaes", "gp", "nsgaii"])
def test_a_resumed_search_seeds_its_sampler_anew_so_it_does_not_draw_its_first_points_again(name):
    space = {"x": FloatDistribution(0.0, 1.0), "k": CategoricalDistribution([1, 2, 3])}
    options = OmegaConf.create({"sampler": OmegaConf.structured(SAMPLERS[name](seed=7))})

    def draws(trials_so_far, n=3):
        study = optuna.create_study(sampler=sampler(options, space, trials_so_far))
        return [study.ask(space).params for _ in range(n)]

    assert draws(0) == draws(0)  # the seed alone: the same trials on every machine
    assert draws(3) != draws(0)  # a study with 3 trials: it goes on from a seed of its own
    assert draws(3) == draws(3)  # ... and that is reproducible too


@pytest.mark.slow
def test_the_dashboard_serves_a_searchs_study_over_http(tiny_root, store_uri, tmp_path):
    """`mnist-cnn-runs --sweep PARENT --dashboard`: the link it prints serves the study, whose
    trials Optuna's dashboard lists through its API."""
    search = (
        "hparams_search=lr_batch",
        "hydra.sweeper.n_trials=2",
        "trainer.limit_batches=3",
        "tracking.log_model=false",
    )
    out = processes.run(processes.train_command(tiny_root, store_uri, *search, multirun=True), tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    parent = next(r for r in runs_in(store_uri) if "mlflow.parentRunId" not in r.data.tags)
    port = free_port()
    command = [sys.executable, "-m", "mnist_cnn.cli.runs", "--tracking-uri", store_uri, "--sweep", parent.info.run_id]
    server = processes.start([*command, "--dashboard", "--port", str(port)], tmp_path)
    try:
        line = server.stdout.readline()
        study_id = line.split("/dashboard/studies/")[1].split()[0]
        assert line.startswith(f"Optuna's dashboard of study sweep-{parent.info.run_id} ("), line
        assert requests.get(line.split(": ", 1)[1].split()[0], timeout=30).status_code == 200
        study = requests.get(f"http://127.0.0.1:{port}/api/studies/{study_id}", timeout=30).json()
        assert study["name"] == f"sweep-{parent.info.run_id}" and len(study["trials"]) == 2
        busy = processes.run([*command, "--dashboard", "--port", str(port)], tmp_path)  # the port is taken now
        assert busy.returncode == 2 and busy.stderr == (
            f"mnist-cnn-runs: --port {port}: cannot serve there (Address already in use); choose another port.\n"
        )
    finally:
        server.send_signal(signal.SIGINT)
        server.communicate(timeout=30)
    assert server.returncode == 130


def test_the_dashboard_needs_the_parent_of_an_optuna_search(tiny_cfg, store_uri, tmp_path, capsys):
    train.run(tiny_cfg("tracking.log_model=false"), tmp_path / "out")
    run_id = only_run(store_uri).info.run_id
    with pytest.raises(SystemExit) as code:
        runs.main(["--tracking-uri", store_uri, "--sweep", run_id, "--dashboard"])
    assert code.value.code == 2 and capsys.readouterr().err == (
        f"mnist-cnn-runs: --sweep {run_id}: not the parent run of an Optuna search (hparams_search=...).\n"
    )


def test_the_dashboard_names_a_study_journal_that_is_gone_and_does_not_make_one(store_uri, tmp_path, capsys):
    journal = tmp_path / "moved" / "mlflow.db.optuna.journal"
    client = MlflowClient(store_uri)
    tags = {"optuna_study": "sweep-x", "optuna_storage": str(journal)}
    run_id = client.create_run(client.create_experiment("searches"), tags=tags).info.run_id
    with pytest.raises(SystemExit) as code:
        runs.main(["--tracking-uri", store_uri, "--sweep", run_id, "--dashboard"])
    assert code.value.code == 2 and capsys.readouterr().err == (
        f"mnist-cnn-runs: --sweep {run_id}: its study's journal {journal} is not there (moved?).\n"
    )
    assert not journal.parent.exists()  # a command that only reads never writes


def test_a_trial_drawn_again_with_a_finished_trials_values_is_told_its_result_not_run():
    """The same values in the same sweep: the same config and seed, so the same result; another
    sweep sharing the study may fix other keys, so its trials are no precedent."""
    study = optuna.create_study(directions=["maximize", "minimize"])
    space = {"x": CategoricalDistribution([1, 2])}
    study.enqueue_trial({"x": 1}, user_attrs={PARENT: "p", RUN: "r1"})
    study.tell(study.ask(space), [0.9, 3.0])
    for parent, told in (("other", False), ("p", True)):
        study.enqueue_trial({"x": 1}, user_attrs={PARENT: parent})
        trial = study.ask(space)
        assert _told_as_before(study, trial) is told
    again = study.trials[-1]
    assert again.values == [0.9, 3.0] and again.user_attrs[RUN] == "r1" and again.user_attrs["repeats"] == 0


def test_an_option_added_to_a_sampler_with_plus_is_named():
    """`+` gets past Hydra's schema: the sweep callback asks this before the parent opens."""
    sweeper = OmegaConf.create(
        {"sampler": {"_target_": "optuna.samplers.TPESampler", "seed": 1, "population_size": 10}}
    )
    assert sampler_problem(sweeper) == (
        "hydra.sweeper.sampler.population_size: not an option of the tpe sampler (its options: seed, n_startup_trials, "
        "n_ei_candidates, multivariate, group, constant_liar)."
    )
    del sweeper.sampler.population_size
    assert sampler_problem(sweeper) is None


@pytest.mark.slow
def test_a_search_with_an_option_its_sampler_lacks_is_one_line_exit_2_and_no_parent(tiny_root, store_uri, tmp_path):
    command = processes.train_command(
        tiny_root, store_uri, "hparams_search=lr_batch", "+hydra.sweeper.sampler.population_size=10", multirun=True
    )
    out = processes.run(command, tmp_path)
    assert out.returncode == 2 and out.stderr.strip().splitlines()[-1].startswith(
        "mnist-cnn-train: hydra.sweeper.sampler.population_size: not an option of the tpe sampler"
    )
    assert runs_in(store_uri) == []
