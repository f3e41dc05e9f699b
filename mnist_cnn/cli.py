"""`mnist-cnn-train`: compose the config with Hydra, then train (see train.run)."""

import logging
import math
import signal
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from mnist_cnn.config import register_configs
from mnist_cnn.errors import UserError
from mnist_cnn.spec import check_config
from mnist_cnn.sweep import in_multirun, worst

log = logging.getLogger("mnist_cnn")

CONF_DIR = Path(__file__).parent / "conf"  # a link to ../conf in a checkout; a copy once installed
register_configs()


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def main(cfg: DictConfig) -> float:
    """Train one run; return `objective.metric` for a sweeper such as Optuna."""
    try:
        check_config(cfg)  # plain Python: a bad config fails in about a second, before torch loads
        from mnist_cnn.train import request_stop, run

        for signum in (signal.SIGINT, signal.SIGTERM):  # stop between steps, keep the last epoch
            signal.signal(signum, request_stop)

        value = run(cfg, Path(HydraConfig.get().runtime.output_dir)).get(cfg.objective.metric, math.nan)
    except KeyboardInterrupt:  # the run is KILLED; tracking logged how to resume it
        sys.exit(130)
    except Exception as e:
        if in_multirun():  # one failed job must not end the sweep: record it as FAILED and go on
            log.error("job failed, the sweep goes on: %s: %s", type(e).__name__, e)
            if cfg.tracking.enabled and not hasattr(e, "mlflow_run_id"):
                from mnist_cnn.tracking import record_failed_job

                record_failed_job(cfg, e)
            return worst(cfg.objective)
        if isinstance(e, UserError):
            log.error("%s", e)
            sys.exit(2)
        raise
    return worst(cfg.objective) if math.isnan(value) else value


if __name__ == "__main__":
    main()
