"""mnist_cnn's Optuna sweeper (`hydra/sweeper=optuna`): Optuna's ask and tell over Hydra's launcher,
with a study that persists and a search that `resume_sweep=` continues.

Hydra instantiates sweepers only from the `hydra_plugins` namespace, so the class lives here; the
search is mnist_cnn.sweep.search and the typed options mnist_cnn.config.search.
"""

from pathlib import Path
from typing import Any, List

from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from omegaconf import DictConfig

from mnist_cnn.config.job import SweepFile
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
