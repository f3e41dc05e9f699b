"""A config loader that composes each job of a basic sweep once (hydra_plugins/mnist_cnn_sweeper's
BasicSweeper). It lives here, not beside the sweeper: Hydra runs its plugins' modules again when it
scans them, which would make the class a launcher pickles for its workers a different object."""

from typing import Any, Dict, List, Sequence, Tuple

from omegaconf import DictConfig


class ComposedOnce:
    """Hydra's config loader, which keeps the job configs the sweeper composed (at most KEEP, and only
    while `keeping`) until the launcher asks for them; anything else goes to the loader itself."""

    KEEP = 64  # a composed config is a few hundred KB: a grid of thousands of jobs composes the rest again

    def __init__(self, loader: Any) -> None:
        self.loader = loader
        self.keeping = True
        self.composed: Dict[Tuple[str, ...], DictConfig] = {}

    def compose(self, master: DictConfig, overrides: Sequence[str]) -> None:
        config = self.loader.load_sweep_config(master_config=master, sweep_overrides=list(overrides))
        if self.keeping and len(self.composed) < self.KEEP:
            self.composed[tuple(overrides)] = config

    def load_sweep_config(self, master_config: DictConfig, sweep_overrides: List[str]) -> DictConfig:
        kept = self.composed.pop(tuple(sweep_overrides), None)
        return kept if kept is not None else self.loader.load_sweep_config(master_config, sweep_overrides)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.loader, name)

    def __getstate__(self) -> Dict[str, Any]:
        return {"loader": self.loader, "keeping": False, "composed": {}}  # a launcher's worker composes its own job

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self.__dict__.update(state)
