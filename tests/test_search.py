"""The Optuna sweeper's parts that need no process: Hydra's search syntax as Optuna distributions,
the samplers' typed options, and a sampler's random state carried over to a resumed sweep."""

import json
import logging
import signal
import sys
from wsgiref.simple_server import WSGIServer
from wsgiref.util import setup_testing_defaults

import optuna
import optuna_dashboard
import pytest
import requests
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate
from mlflow import MlflowClient
from omegaconf import OmegaConf
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from mnist_cnn.cli import runs
from mnist_cnn.config.search import SAMPLERS, sampler_problem, study_of
from mnist_cnn.runner import train
from mnist_cnn.sweep.callback import MlflowSweepCallback, sweep_argv
from mnist_cnn.sweep.checks import sampler_problem as sampler_problem_of
from mnist_cnn.sweep.checks import search_problem
from mnist_cnn.sweep.search import _told_as_before, search_space
from mnist_cnn.sweep.search_report import importance_lines, log_importances
from mnist_cnn.sweep.study import PARENT, RUN, open_storage, open_study, sampler
from tests.helpers import processes
from tests.helpers.config import TINY
from tests.helpers.mlflow_store import free_port, only_run
from tests.helpers.mlflow_store import runs as runs_in
from tests.helpers.searches import sweep_config


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


BAD_SEARCHES = {
    "n_trials-below-1": (["hydra.sweeper.n_trials=-1"], {}, "hydra.sweeper.n_trials=-1: give 1 or more."),
    "n_jobs-below-1": (["hydra.sweeper.n_jobs=0"], {}, "hydra.sweeper.n_jobs=0: give 1 or more."),
    "grid-with-interval": (
        ["hydra/sweeper/sampler=grid"],
        {},
        "hydra/sweeper/sampler=grid tries every combination of choice(...) values, but optimizer.lr is searched as "
        "tag(log, interval(0.0001, 0.01)); make it a choice(...), or pick another sampler.",
    ),
    "cmaes-two-objectives": (
        [
            "hydra/sweeper/sampler=cmaes",
            "objective.metrics=[val_acc,train_time_s]",
            "objective.directions=[maximize,minimize]",
        ],
        {},
        "hydra/sweeper/sampler=cmaes optimises one objective, but objective.metrics has 2; use "
        "hydra/sweeper/sampler=nsgaii (or tpe) for several.",
    ),
    "low-above-high": (
        [],
        {"optimizer.lr": "interval(0.1, 0.01)"},
        "optimizer.lr=interval(0.1, 0.01): not a search space Optuna can draw from (`low <= high` must hold, but got "
        "(low=0.1, high=0.01)); fix it in hydra.sweeper.params or on the command line.",
    ),
    "misspelled-key": (
        [],
        {"optimzer.lr": "choice(0.1, 0.2)"},
        "optimzer.lr: not a key of the config (did you mean optimizer.lr? a misspelled key would fail every trial); "
        "fix it in hydra.sweeper.params or on the command line.",
    ),
    "unwritable-storage": (
        ["hydra.sweeper.storage=a_file/study.journal"],
        {},
        "hydra.sweeper.storage={tmp}/a_file/study.journal: cannot write the study there (Not a directory); name "
        "another file.",
    ),
    "the-mlflow-store": (
        ["hydra.sweeper.storage=sqlite:///mlflow.db"],
        {},
        "hydra.sweeper.storage=sqlite:///{tmp}/mlflow.db is the MLflow tracking store itself, where Optuna would add "
        "its own tables; leave hydra.sweeper.storage out (a journal beside the store), or name another file.",
    ),
}


@pytest.mark.parametrize("overrides, params, message", BAD_SEARCHES.values(), ids=BAD_SEARCHES)
def test_a_search_that_could_not_run_is_one_line_exit_2_before_its_parent_opens(
    tiny_root, store_uri, tmp_path, capsys, overrides, params, message
):
    """Each was found only once the parent was open and a trial asked: Optuna's traceback, the
    parent KILLED, a trial left RUNNING, and a resumed sweep failing the same way."""
    (tmp_path / "a_file").write_text("")
    config = sweep_config(
        tmp_path,
        "hparams_search=lr_batch",
        f"data.root={tiny_root}",
        *TINY,
        f"tracking.uri={store_uri}",
        *overrides,
        params=params,
    )
    with pytest.raises(SystemExit) as code:
        MlflowSweepCallback().on_multirun_start(config)
    assert code.value.code == 2
    assert capsys.readouterr().err == f"mnist-cnn-train: {message.format(tmp=tmp_path)}\n"
    assert runs_in(store_uri) == [] and not (tmp_path / "sweep").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "mlflow.db"]  # no journal, no study


def test_a_sweep_joining_a_study_that_searched_another_space_or_objective_is_refused(tmp_path):
    """`hydra.sweeper.study_name` shared with a sweep of another space ended in Optuna's traceback
    (CategoricalDistribution does not support dynamic value space) with a trial left RUNNING; one of
    other objectives was accepted, mixing val_acc and val_loss in one study. The study is compared
    first: the keys it searched, its directions and the metric names it records."""
    shared = (
        "hparams_search=lr_batch",
        "hydra.sweeper.study_name=shared",
        f"hydra.sweeper.storage={tmp_path}/s.journal",
    )
    first = sweep_config(tmp_path, *shared)
    space, _ = search_space(first.hydra.sweeper.params, [])
    study = open_study(first, space, None)
    study.tell(study.ask(space), 0.9)
    assert search_problem(first) is None  # the same search joins it
    batch = sweep_config(tmp_path, *shared, params={"data.batch_size": "choice(32, 64)"})
    assert search_problem(batch) == (
        "study shared: it searched data.batch_size as choice(64, 128, 256), this sweep as choice(32, 64); search the "
        "same space, or name another hydra.sweeper.study_name."
    )
    fewer = sweep_config(tmp_path, *shared, "data.batch_size=64")  # fixed on the command line: no longer searched
    assert "it searched data.batch_size as choice(64, 128, 256), this sweep as not searched" in search_problem(fewer)
    for objective, ours in (
        (["objective.metrics=[val_loss]", "objective.directions=[minimize]"], "val_loss (minimize)"),
        (["objective.metrics=[val_loss]"], "val_loss (maximize)"),  # the same direction: the recorded name differs
    ):
        assert search_problem(sweep_config(tmp_path, *shared, *objective)) == (
            f"study shared: it optimises val_acc (maximize), but this sweep's objective is {ours}; keep "
            "objective.metrics and objective.directions as they were, or name another hydra.sweeper.study_name."
        )
    assert [t.state.name for t in study.trials] == ["COMPLETE"]  # nothing asked


def test_a_sampler_whose_package_is_missing_is_named_before_the_search(monkeypatch):
    monkeypatch.setitem(sys.modules, "cmaes", None)  # as where it is not installed
    assert sampler_problem_of("CmaEsSampler", {"x": FloatDistribution(0.0, 1.0)}, 1) == (
        "hydra/sweeper/sampler=cmaes needs the cmaes package, which is not installed here: pip install cmaes (or pick "
        "another sampler)."
    )


@pytest.mark.slow
def test_a_sweep_joining_a_study_with_another_space_leaves_no_parent_and_no_trial(tiny_root, store_uri, tmp_path):
    """The whole command: one line, exit 2; the study keeps its one trial (none RUNNING, none
    counted toward n_trials) and the store its one sweep."""
    shared = ("hparams_search=lr_batch", "hydra.sweeper.study_name=shared", "hydra.sweeper.n_trials=1")
    first = processes.run(processes.train_command(tiny_root, store_uri, *shared, multirun=True), tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    before = runs_in(store_uri)
    other = processes.train_command(
        tiny_root, store_uri, *shared, "model.layers.0.out_channels=choice(8,16)", multirun=True
    )
    out = processes.run(other, tmp_path)
    assert out.returncode == 2 and out.stderr.strip().splitlines()[-1] == (
        "mnist-cnn-train: study shared: it searched model.layers.0.out_channels as choice(16, 32, 48), this sweep "
        "as choice(8, 16); search the same space, or name another hydra.sweeper.study_name."
    )
    assert [r.info.run_id for r in runs_in(store_uri)] == [r.info.run_id for r in before]
    study = optuna.load_study(study_name="shared", storage=open_storage(str(tmp_path / "mlflow.db.optuna.journal")))
    assert [t.state.name for t in study.trials] == ["COMPLETE"]


def test_a_studys_file_is_named_absolute_and_resumed_from_anywhere(tmp_path, monkeypatch):
    """`~/x.journal` made a folder named `~`; a relative journal resumed from another folder started
    a new, empty study. The path is made absolute against the folder the command started in (the
    user's home for `~`), and the sweep records it so for `resume_sweep=`."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    for given, absolute in (
        ("~/x.journal", str(tmp_path / "home" / "x.journal")),
        ("studies/x.journal", str(tmp_path / "studies" / "x.journal")),
        ("sqlite:///optuna.db", f"sqlite:///{tmp_path}/optuna.db"),
        ("postgresql://host/optuna", "postgresql://host/optuna"),  # a server's URL as it is
    ):
        config = sweep_config(tmp_path, "hparams_search=lr_batch", f"hydra.sweeper.storage='{given}'", "seed=3")
        assert study_of(config, "p").storage == absolute
        assert sweep_argv(config) == [f"hydra.sweeper.storage='{absolute}'", "hparams_search=lr_batch", "seed=3"]


def test_the_dashboard_links_the_port_it_listens_on_and_shows_the_metric_names(
    tmp_path, store_uri, monkeypatch, capsys
):
    """`--port 0` printed `http://127.0.0.1:0/...` (the system picks a port: the link names it);
    the study records its objective's metric names, which Optuna's dashboard shows instead of
    "Objective 0"."""
    config = sweep_config(
        tmp_path,
        "hparams_search=lr_batch",
        f"tracking.uri={store_uri}",
        "objective.metrics=[val_loss,train_time_s]",
        "objective.directions=[minimize,minimize]",
    )
    space, _ = search_space(config.hydra.sweeper.params, [])
    where = study_of(config, "p")
    study = open_study(config, space, "p")
    client = MlflowClient(store_uri)
    tags = {"optuna_study": where.name, "optuna_storage": where.storage}
    run_id = client.create_run(client.create_experiment("searches"), tags=tags).info.run_id
    monkeypatch.setattr(WSGIServer, "serve_forever", lambda server: None)  # as if Ctrl-C came at once
    runs.main(["--tracking-uri", store_uri, "--sweep", run_id, "--dashboard", "--port", "0"])
    port = int(capsys.readouterr().out.split("http://127.0.0.1:")[1].split("/")[0])
    assert port > 0
    environ = {"PATH_INFO": f"/api/studies/{study._study_id}"}
    setup_testing_defaults(environ)
    served = json.loads(b"".join(optuna_dashboard.wsgi(open_storage(where.storage))(environ, lambda *a: None)))
    assert served["objective_names"] == ["val_loss", "train_time_s"]  # "Objective 0", "Objective 1" without


@pytest.mark.parametrize("port", ["70000", "-1", "eighty"])
def test_a_port_that_is_no_port_is_refused_by_the_argument_parser(port, capsys):
    with pytest.raises(SystemExit) as code:
        runs.parse_args(["--sweep", "x", "--dashboard", "--port", port])
    assert code.value.code == 2 and capsys.readouterr().err.endswith(
        f"argument --port: {port!r} is not a port; give 1 to 65535, or 0 for any free port\n"
    )


def test_a_searchs_importances_are_printed_a_key_a_line_and_called_noise_over_few_trials(store_uri, caplog):
    """They were buried in the sweep's 400-character summary line, with no word that fANOVA over a
    few trials is noise."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    space = {"optimizer.lr": FloatDistribution(0.0, 1.0), "seed": FloatDistribution(0.0, 1.0)}
    for _ in range(6):
        trial = study.ask(space)
        study.tell(trial, trial.params["optimizer.lr"])
    client = MlflowClient(store_uri)
    run_id = client.create_run(client.create_experiment("searches")).info.run_id
    with caplog.at_level(logging.INFO, logger="mnist_cnn.sweep.search_report"):
        log_importances(client, run_id, study, ["val_acc"])
    (printed,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("what mattered")]
    head, *lines = printed.splitlines()
    assert head == (
        "what mattered to val_acc (fANOVA over 6 completed trials; too few to mean much: about 20 would be, 10 per "
        "searched key):"
    )
    assert [line.split()[0] for line in lines] == ["optimizer.lr", "seed"]  # the one the value follows first
    assert importance_lines("val_acc", {"optimizer.lr": 0.7, "seed": 0.3}, 20).splitlines() == [
        "what mattered to val_acc (fANOVA over 20 completed trials):",
        "  optimizer.lr  0.70",
        "  seed          0.30",
    ]
