"""`mnist-cnn-train`: compose the config with Hydra, then train (see train.run)."""

import logging
import signal
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from mnist_cnn.config import register_configs
from mnist_cnn.errors import UserError
from mnist_cnn.spec import check_config

log = logging.getLogger("mnist_cnn")

CONF_DIR = Path(__file__).parent / "conf"  # a link to ../conf in a checkout; a copy once installed
register_configs()


def _interrupt(signum, frame):
    """SIGTERM ends a run like Ctrl-C does: the MLflow run is closed as KILLED."""
    raise KeyboardInterrupt(f"signal {signum}")


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def main(cfg: DictConfig) -> float:
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        check_config(cfg)  # plain Python: a bad config fails in about a second, before torch loads
        from mnist_cnn.train import run

        metrics = run(cfg, Path(HydraConfig.get().runtime.output_dir))
    except UserError as e:
        log.error("%s", e)
        sys.exit(2)
    return metrics["test_acc"]


if __name__ == "__main__":
    main()
