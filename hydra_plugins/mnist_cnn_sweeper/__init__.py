"""mnist_cnn's sweepers: Optuna's ask and tell over Hydra's launcher, with a study that persists and
a search that `resume_sweep=` continues (`hydra/sweeper=optuna`); and Hydra's basic sweeper with
each job's config composed once (`hydra/sweeper=basic`, the default, whose config-store entry
mnist_cnn.config.search puts in place of Hydra's own).

Hydra instantiates sweepers only from the `hydra_plugins` namespace, so the class lives here; the
search is mnist_cnn.sweep.search and the typed options mnist_cnn.config.search.
"""

from pathlib import Path
from typing import Any, List, Sequence

from hydra._internal.core_plugins.basic_launcher import BasicLauncher
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper as HydrasBasicSweeper
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext
from omegaconf import DictConfig

from mnist_cnn.config.job import SweepFile
from mnist_cnn.sweep.compose import ComposedOnce
from mnist_cnn.timing import collector_paused


class OptunaSweeper(Sweeper):
    """Runs `hydra.sweeper.n_trials` trials of an Optuna study, `n_jobs` at a time."""

    def __init__(self, **options: Any) -> None:
        self.options = options  # also in the config: the search reads them from there

    def setup(self, *, hydra_context: Any, task_function: Any, config: DictConfig) -> None:
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def sweep(self, arguments: List[str]) -> None:
        with collector_paused():  # the search's first jobs wait for these imports
            from mnist_cnn.sweep.search import run_search  # Optuna and MLflow: seconds to import, only for a search

        sweep = SweepFile.read(Path(self.config.hydra.sweep.dir))  # the parent run the sweep callback opened
        run_search(self.config, self.launcher, arguments, sweep.parent_run_id if sweep else None)


class BasicSweeper(HydrasBasicSweeper):
    """Hydra's basic sweeper (every combination of the values given to -m), whose launcher is handed
    each job's config as the sweeper composed it. Hydra's composes every job of a batch before
    launching it, to fail before the first job runs, and the basic launcher then composes each again
    as it starts it: 0.15 s a job on 2 cores, paid twice. Launchers that compose in their workers
    (joblib, submitit) compose there as before, and nothing is kept for them."""

    def setup(self, *, hydra_context: HydraContext, task_function: Any, config: DictConfig) -> None:
        once = ComposedOnce(hydra_context.config_loader)
        super().setup(
            hydra_context=HydraContext(config_loader=once, callbacks=hydra_context.callbacks),
            task_function=task_function,
            config=config,
        )
        once.keeping = isinstance(self.launcher, BasicLauncher)  # the one that composes in this process

    def validate_batch_is_legal(self, batch: Sequence[Sequence[str]]) -> None:
        for overrides in batch:
            self.hydra_context.config_loader.compose(self.config, overrides)
