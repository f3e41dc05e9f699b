"""The Optuna sweeper's parts that need no process: Hydra's search syntax as Optuna distributions,
the samplers' typed options, and a sampler's random state carried over to a resumed sweep."""

import optuna
import pytest
from hydra.core.config_store import ConfigStore
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate
from omegaconf import OmegaConf
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from mnist_cnn.config.search import SAMPLERS, OptunaSweeperConfig
from mnist_cnn.sweep.search import random_states, restore_random_states, search_space


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
def test_a_samplers_random_state_carries_over_so_a_resumed_search_continues_its_sequence(name):
    space = {"x": FloatDistribution(0.0, 1.0), "k": CategoricalDistribution([1, 2, 3])}

    def draws(sampler, n):
        study = optuna.create_study(sampler=sampler)
        return [study.ask(space).params for _ in range(n)]

    first = instantiate(OmegaConf.structured(SAMPLERS[name](seed=7)))
    before = draws(first, 3)
    resumed = instantiate(OmegaConf.structured(SAMPLERS[name](seed=7)))
    restore_random_states(resumed, random_states(first))
    assert draws(resumed, 3) != before  # without the state, the seed would draw the same values again
    assert random_states(first)


def test_the_sweeper_schema_is_in_hydras_config_store():
    assert OptunaSweeperConfig().n_trials == 20
    assert ConfigStore.instance().load("hydra/sweeper/optuna.yaml") is not None
