"""`mnist-cnn-verify RUN`: train a finished run again from the config it logged, and check that the
same numbers come out.

The rerun trains in a scratch folder and is not recorded (`--record`: as a new run in the same
store, tagged `verifies`). Each epoch's metrics (losses, accuracies, learning rate; not the
timings, which always differ) and the final `weights_sha256` are compared with what RUN logged:
exit 0 when all are equal, 1 at the first difference, which is named. The rerun keeps the
precision RUN resolved. Training is bit for bit repeatable on one host, with one torch version and
device; when RUN's fingerprints name another, equality is not expected, and the metrics are
compared within `--tolerance` (relative) instead, the weights not at all. Before it trains, verify
names the installed packages whose versions differ from those RUN logged in its environment.txt
(or says RUN has none). `--epochs K` checks only
the first K epochs (the config unchanged, so the learning-rate schedule is too); a sweep's job that
its pruner stopped is checked up to the epoch it was pruned at. Ctrl-C or SIGTERM stops the rerun
and deletes its scratch folder (exit 130).
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
from mnist_cnn.config.job import JobContext
from mnist_cnn.config.schema import typed_config
from mnist_cnn.errors import ConfigError
from mnist_cnn.interrupts import Signals
from mnist_cnn.tracking.environment import VERSION, differing_packages, installed_packages, package_versions
from mnist_cnn.tracking.states import RunState, state_of

EXIT_DIFFERENT = 1
VERIFIES = "verifies"  # the tag of a rerun recorded with --record: the run it verified


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="mnist-cnn-verify", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run", metavar="RUN", help="the id of a FINISHED run (or of a sweep's job its pruner stopped)")
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
    sys.exit(run_command("mnist-cnn-verify", lambda: verify(args), stopped="nothing compared, scratch folder deleted."))


def check_args(args: argparse.Namespace) -> None:
    """Refuse what no rerun could satisfy before anything is loaded: ConfigError."""
    if not math.isfinite(args.tolerance) or args.tolerance < 0:
        raise ConfigError(
            f"--tolerance {args.tolerance:g}: give a relative difference of 0 or more (the default 1e-3 is 0.1%)."
        )
    if args.epochs is not None and args.epochs < 1:
        raise ConfigError(f"--epochs {args.epochs}: give 1 or more")
    if args.epochs is not None and args.record:
        raise ConfigError("--record keeps a whole rerun: drop --epochs.")


def verify(args: argparse.Namespace) -> int:
    """Rerun RUN and compare; returns the exit code."""
    check_args(args)
    signals = Signals()
    signals.install()  # SIGTERM, like Ctrl-C, stops the rerun: exit 130, its scratch folder deleted
    from mnist_cnn.engine.checkpoint import load_checkpoint  # torch: seconds to import, after the arguments
    from mnist_cnn.runner.train import run as train  # torch and MLflow, as above
    from mnist_cnn.tracking import store  # MLflow, as above
    from mnist_cnn.tracking.lookup import find_run, require_trained, run_environment  # MLflow, as above

    client = store.connect(args.tracking_uri, read_only=not args.record)
    logged = find_run(client, args.run, "RUN")
    require_trained(logged, "RUN")
    until = checked_epochs(logged, args)
    ctx = JobContext(precision=logged.data.params.get("trainer.precision"), scratch=True, stops=signals.job_started())
    with tempfile.TemporaryDirectory(prefix="mnist-cnn-verify-") as scratch:
        cfg = rerun_config(client, logged, scratch, args)
        print(package_differences(run_environment(client, args.run, scratch), args.run), flush=True)
        epochs = min(until or cfg.trainer.epochs, cfg.trainer.epochs)
        kept = "recorded" if args.record else "not recorded (--record keeps it as a run)"
        print(
            f"training run {args.run} again ({epochs} epoch{'s' * (epochs != 1)}) in {scratch}, {kept} ...", flush=True
        )
        outcome = train(cfg, Path(scratch) / "rerun", ctx, until=until)
        ours = load_checkpoint(Path(scratch) / "rerun" / names.CHECKPOINT)["history"]
    if outcome.run_id is not None:
        client.set_tag(outcome.run_id, VERIFIES, args.run)
    elsewhere = other_environment(logged, cfg)
    if elsewhere:
        print(f"{elsewhere}: equality is not expected; metrics compared within a relative {args.tolerance:g}")
    partial = "--epochs checks the epochs' metrics only" if args.epochs else "a pruned run has no final weights"
    return compare(client, logged, ours, outcome.weights_sha256, args.tolerance if elsewhere else 0.0, partial)


def checked_epochs(logged: Any, args: argparse.Namespace) -> Optional[int]:
    """The epochs the rerun trains and checks: all (None), --epochs K, or those of a sweep's job up
    to the epoch its pruner stopped it at; ConfigError for a run no rerun can match."""
    state = state_of(logged)
    if state is RunState.PRUNED:
        pruned = int(logged.data.tags[names.PRUNED_AT])
        if args.record:
            raise ConfigError(
                f"run {args.run} was pruned by its sweep after epoch {pruned}: verify checks those {pruned} "
                "epochs without --record (a recorded rerun is a whole run); drop --record."
            )
        return min(args.epochs or pruned, pruned)
    if state is not RunState.FINISHED:
        raise ConfigError(
            f"run {args.run} is {state.value}: verify a FINISHED run (finish it first with "
            f"mnist-cnn-train resume={args.run})."
        )
    return args.epochs


def rerun_config(client: Any, logged: Any, scratch: str, args: argparse.Namespace) -> DictConfig:
    """RUN's config as it trained (its precision is kept apart: JobContext.precision), with data
    where it was (or --data-root), registering nothing, and recorded only with --record: unrecorded,
    it keeps no epoch models and has no pruner (both need the store; neither changes what is
    trained, and the rerun of a pruned job stops where it was pruned)."""
    from mnist_cnn.tracking.lookup import run_config  # MLflow: seconds to import

    cfg = typed_config(run_config(client, logged.info.run_id, scratch, "RUN"))
    cfg.trainer.progress = False
    cfg.resume = cfg.resume_sweep = None
    cfg.data.root = data_root(args.data_root, cfg.data, logged.info.run_id)
    cfg.tracking.enabled, cfg.tracking.register_as = args.record, None
    if args.record:
        cfg.tracking.uri, cfg.tracking.run_name = args.tracking_uri, f"verify-{logged.info.run_name}"
    else:
        cfg.trainer.keep_best, cfg.tracking.register_from = 0, "last"
        cfg.objective.pruner, cfg.objective.prune_patience = "none", None
    check_config(cfg)
    return cfg


def compare(
    client: Any, logged: Any, ours: List[Dict[str, float]], weights: Optional[str], tolerance: float, partial: str = ""
) -> int:
    """Print each epoch's verdict and the weights' (`tolerance` 0: equal, else relative; the weights
    then not compared, nor when the rerun stopped before the end: `partial` says why); returns 0
    when all agree, else 1."""
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
        print("weights_sha256: not compared" + (" (another environment)" if tolerance else f" ({partial})"))
        return 0
    recorded = logged.data.tags.get(names.WEIGHTS_SHA256)
    if recorded != weights:
        print(f"weights_sha256 differs: {recorded} logged, {weights} now")
        return EXIT_DIFFERENT
    print(f"weights_sha256: the same ({weights})")
    return 0


def package_differences(theirs: Optional[Dict[str, str]], run_id: str) -> str:
    """The line naming the installed packages whose versions differ from those run `run_id` logged
    in its environment.txt (None: it logged none)."""
    if theirs is None:
        return f"run {run_id} has no {names.ENVIRONMENT_FILE} (it predates them): package versions not compared"
    differ = differing_packages(theirs, installed_packages())
    if not differ:
        return f"packages: the same {len(theirs)} versions as the run's"
    return "packages that differ from the run's: " + ", ".join(differ)


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


if __name__ == "__main__":
    main()
