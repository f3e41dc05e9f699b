"""Console commands: `mnist-cnn-train` (Hydra; also `python -m mnist_cnn`), `mnist-cnn-runs`,
`mnist-cnn-predict`, `mnist-cnn-eval`, `mnist-cnn-verify` and `mnist-cnn-export`."""

import sys
from typing import Any, Callable

from mnist_cnn.errors import EXIT_INTERRUPTED, UserError
from mnist_cnn.tracking.redact import redact


def run_command(prog: str, command: Callable[[], Any], stopped: str = "") -> Any:
    """`command()`, as a console command runs it: a UserError becomes one line on stderr, `PROG:
    message` with credentials masked, and its exit code; Ctrl-C exits 130, after `stopped` (what it
    left undone) when given."""
    try:
        return command()
    except UserError as e:
        print(f"{prog}: {redact(str(e))}", file=sys.stderr)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        if stopped:
            print(f"{prog}: stopped by Ctrl-C; {stopped}", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
