"""mnist_cnn's Optuna sweeper: Hydra's, able to `resume_sweep=PARENT_RUN_ID`.

Hydra instantiates sweepers only from the `hydra_plugins` namespace, so the class lives here;
the work is in mnist_cnn.sweep.warm_start. The search spaces in mnist_cnn/conf/hparams_search/ select it.
"""

from typing import Any, List

from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper
from omegaconf import DictConfig


class ResumableOptunaSweeper(OptunaSweeper):
    """With resume_sweep set, the study starts from the trials the sweep already ran."""

    def setup(self, *, hydra_context: Any, task_function: Any, config: DictConfig) -> None:
        super().setup(hydra_context=hydra_context, task_function=task_function, config=config)
        self.config = config

    def sweep(self, arguments: List[str]) -> None:
        if self.config.resume_sweep and self.config.tracking.enabled:
            from mnist_cnn.sweep.warm_start import warm_start  # Optuna and MLflow: only when resuming

            warm_start(self.sweeper, self.config, arguments)
        return super().sweep(arguments)
