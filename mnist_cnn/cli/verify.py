"""`mnist-cnn-verify RUN`: train a finished run again from the config it logged, and check that the
same numbers come out.

The rerun trains in a scratch folder and is not recorded (`--record`: as a new run in the same
store, tagged `verifies`). Each epoch's metrics (losses, accuracies, learning rate; not the
timings, which always differ) and the final `weights_sha256` are compared with what RUN logged:
exit 0 when all are equal, 1 at the first difference, which is named. The rerun keeps the
precision RUN resolved. Training is bit for bit repeatable on one host, with one torch version and
device; when RUN's fingerprints name another, equality is not expected, and the metrics are
compared within `--tolerance` (relative) instead, the weights not at all. `--epochs K` checks only
the first K epochs (the config unchanged, so the learning-rate schedule is too).
"""

import argparse
import math
import socket
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional

from omegaconf import DictConfig

from mnist_cnn import names
from mnist_cnn.cli.common import data_root, data_root_argument, run_command, tracking_uri_argument
from mnist_cnn.config.checks import check_config
from mnist_cnn.config.schema import typed_config
from mnist_cnn.errors import ConfigError
from mnist_cnn.tracking.environment import VERSION, package_versions
from mnist_cnn.tracking.states import RunState, state_of

EXIT_DIFFERENT = 1
VERIFIES = "verifies"  # the tag of a rerun recorded with --record: the run it verified


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="mnist-cnn-verify", description=__doc__.splitlines()[0])
    parser.add_argument("run", metavar="RUN", help="the id of a FINISHED run")
    tracking_uri_argument(parser)
    parser.add_argument("--epochs", type=int, metavar="K", help="check only the first K epochs")
    parser.add_argument("--record", action="store_true", help="record the rerun as a new run, tagged verifies=RUN")
    data_root_argument(parser)
    parser.add_argument(
        "--tolerance",
        type=float,
        default=1e-3,
        help="relative difference allowed when another host, torch version or device trained RUN (default 1e-3)",
    )
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> None:
    args = parse_args(argv)
    sys.exit(run_command("mnist-cnn-verify", lambda: verify(args)))


def verify(args: argparse.Namespace) -> int:
    """Rerun RUN and compare; returns the exit code."""
    from mnist_cnn.engine.checkpoint import load_checkpoint  # torch: seconds to import, after the arguments
    from mnist_cnn.runner.train import run as train  # torch and MLflow, as above
    from mnist_cnn.tracking import store  # MLflow, as above
    from mnist_cnn.tracking.lookup import find_run  # MLflow, as above

    if args.epochs is not None and (args.epochs < 1 or args.record):
        raise ConfigError(
            f"--epochs {args.epochs}: give 1 or more"
            if args.epochs < 1
            else "--record keeps a whole rerun: drop --epochs."
        )
    client = store.connect(args.tracking_uri, read_only=not args.record)
    logged = find_run(client, args.run, "RUN")
    state = state_of(logged)
    if state is not RunState.FINISHED:
        raise ConfigError(
            f"run {args.run} is {state.value}: verify a FINISHED run (finish it first with "
            f"mnist-cnn-train resume={args.run})."
        )
    with tempfile.TemporaryDirectory(prefix="mnist-cnn-verify-") as scratch:
        cfg = rerun_config(client, logged, scratch, args)
        epochs = _epochs(cfg, args.epochs)
        print(f"training run {args.run} again ({epochs} epoch{'s' * (epochs != 1)}) in {scratch} ...", flush=True)
        outcome = train(cfg, Path(scratch) / "rerun", until=args.epochs)
        ours = load_checkpoint(Path(scratch) / "rerun" / names.CHECKPOINT)["history"]
    if outcome.run_id is not None:
        client.set_tag(outcome.run_id, VERIFIES, args.run)
    elsewhere = other_environment(logged, cfg)
    if elsewhere:
        print(f"{elsewhere}: equality is not expected; metrics compared within a relative {args.tolerance:g}")
    weights = outcome.weights_sha256 if args.epochs is None else None
    return compare(client, logged, ours, weights, args.tolerance if elsewhere else 0.0)


def rerun_config(client: Any, logged: Any, scratch: str, args: argparse.Namespace) -> DictConfig:
    """RUN's config as it trained: its own precision, data where it was (or --data-root), recorded
    only with --record, and registering nothing."""
    from mnist_cnn.tracking.lookup import run_config  # MLflow: seconds to import

    cfg = typed_config(run_config(client, logged.info.run_id, scratch, "RUN"))
    cfg.trainer.precision = logged.data.params.get("trainer.precision", cfg.trainer.precision)
    cfg.trainer.progress = False
    cfg.resume = cfg.resume_sweep = None
    cfg.data.root = data_root(args.data_root, cfg.data, logged.info.run_id)
    cfg.tracking.enabled, cfg.tracking.register_as = args.record, None
    if args.record:
        cfg.tracking.uri, cfg.tracking.run_name = args.tracking_uri, f"verify-{logged.info.run_name}"
    check_config(cfg)
    return cfg


def compare(client: Any, logged: Any, ours: List[Dict[str, float]], weights: Optional[str], tolerance: float) -> int:
    """Print each epoch's verdict and the weights' (`tolerance` 0: equal, else relative; the weights
    then not compared); returns 0 when all agree, else 1."""
    from mnist_cnn.tracking.compare import HISTORY, history  # MLflow, loaded by the rerun already

    theirs = history(client, logged.info.run_id)
    for epoch, metrics in enumerate(ours, start=1):
        compared = [key for key in metrics if key in HISTORY]  # the timings are never the same twice
        for key in compared:
            recorded = theirs.get(epoch, {}).get(key, math.nan)
            if not _agree(recorded, metrics[key], tolerance):
                print(f"epoch {epoch}: {key} differs: {recorded!r} logged, {metrics[key]!r} now")
                return EXIT_DIFFERENT
        print(f"epoch {epoch}: the same {', '.join(compared)}")
    if weights is None or tolerance:
        print(
            "weights_sha256: not compared"
            + (" (another environment)" if tolerance else " (--epochs checks the epochs' metrics only)")
        )
        return 0
    recorded = logged.data.tags.get(names.WEIGHTS_SHA256)
    if recorded != weights:
        print(f"weights_sha256 differs: {recorded} logged, {weights} now")
        return EXIT_DIFFERENT
    print(f"weights_sha256: the same ({weights})")
    return 0


def other_environment(logged: Any, cfg: DictConfig) -> Optional[str]:
    """Why bit-for-bit equality is not expected (another host, torch version or device trained
    RUN than the rerun's), or None."""
    from mnist_cnn.engine.loop import resolve_device  # torch, loaded by the rerun already

    tags = logged.data.tags
    here = {
        names.HOST: socket.gethostname(),
        VERSION + "torch": package_versions()["torch"],
        names.DEVICE: str(resolve_device(str(cfg.trainer.device))),
    }
    differs = [f"{key} {tags.get(key)!r} (here {value!r})" for key, value in here.items() if tags.get(key) != value]
    return "RUN was trained with another " + ", ".join(differs) if differs else None


def _agree(recorded: float, value: float, tolerance: float) -> bool:
    if tolerance == 0.0:
        return recorded == value
    return math.isclose(recorded, value, rel_tol=tolerance, abs_tol=tolerance)


def _epochs(cfg: DictConfig, epochs: Optional[int]) -> int:
    return min(epochs or cfg.trainer.epochs, cfg.trainer.epochs)


if __name__ == "__main__":
    main()
