"""The package's layers, written once here, and the tests that keep every import within them.

A layer imports only from the layers below it, and the units of one layer never import each other,
so no two subpackages can import each other in a loop. Imports inside functions count like the
others. They are allowed only for what is slow to import and not always needed (HEAVY: torch,
torchvision, MLflow, Optuna, matplotlib, or a module of this package that imports one of them at
its top) and for an optional extra's package (OPTIONAL: the command works without it until the
option that needs it), each with a comment saying why.

`python -m tests.test_layers` prints the diagram of the units and their imports that
docs/architecture.md shows; a test keeps the two equal.
"""

import ast
import importlib
import json
import re
import sys
from collections import defaultdict
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Dict, List, Set, Tuple

import pytest

from tests.helpers import processes
from tests.helpers.config import TINY

ROOT = Path(__file__).parents[1]
# our code: the package and the plugins Hydra loads (the Optuna sweeper, experiments/ as the group `experiment`)
PACKAGES = ("mnist_cnn", "hydra_plugins/mnist_cnn_sweeper", "hydra_plugins/mnist_cnn_experiments")

# Lowest first: (name, units, what they are). A unit is a subpackage of mnist_cnn or a top-level module.
LAYERS: Tuple[Tuple[str, Tuple[str, ...], str], ...] = (
    ("words", ("names", "errors"), "what runs are recorded under in MLflow; what can go wrong, with exit codes"),
    ("process", ("interrupts", "timing"), "what Ctrl-C and SIGTERM do to a run; where its wall time goes"),
    (
        "inputs",
        ("data", "model"),
        "MNIST-format files, checks and splits; layer kinds, shape inference, the network, the builder",
    ),
    ("config", ("config",), "the config tree, its typed schema, the checks that run before torch loads"),
    ("engine", ("engine",), "the training state, step loop, optimizers, checkpoints, precision, CUDA graphs, DDP"),
    ("results", ("report", "tracking"), "scoring a model class by class with figures; everything MLflow sees"),
    ("try by hand", ("demo",), "the page mnist-cnn-demo serves: a drawing pad read by several models"),
    ("story", ("runner",), "one run: where it starts (or restarts), its set-up, its epochs and hooks, what it records"),
    (
        "sweeps",
        ("sweep",),
        "a multirun as one experiment: its parent run, the Optuna search, pruning, the champion",
    ),
    (
        "entry points",
        ("cli", "hydra_plugins"),
        "the console commands; the Optuna sweeper and experiments/ that Hydra loads",
    ),
    ("python -m", ("__main__",), "`python -m mnist_cnn` is mnist-cnn-train"),
)
BASE = 2  # the layers below this one are used from everywhere: the diagram leaves out the arrows into them
HEAVY = ("torch", "torchvision", "mlflow", "optuna", "matplotlib")
OPTIONAL = ("optuna_dashboard", "onnx", "onnxruntime")  # the optional-dependencies of the sweep and export extras


@dataclass(frozen=True)
class Import:
    source: str  # the importing module, e.g. mnist_cnn.runner.train
    target: str  # the imported module (for `from X import name`, X.name when that is a module)
    line: int
    in_function: bool
    commented: bool  # the import's line carries a comment


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@lru_cache(maxsize=None)
def modules() -> Dict[str, Path]:
    return {module_name(p): p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))}


def unit(module: str) -> str:
    """mnist_cnn.runner.train -> runner; mnist_cnn.names -> names; hydra_plugins.x -> hydra_plugins."""
    parts = module.split(".")
    return parts[0] if parts[0] == "hydra_plugins" else (parts[1] if len(parts) > 1 else "mnist_cnn")


@lru_cache(maxsize=None)
def imports() -> Tuple[Import, ...]:
    found = []
    for name, path in modules().items():
        text = path.read_text(encoding="utf-8")
        lines = text.splitlines()
        for node, in_function in _walk(ast.parse(text), False):
            for target in _targets(node):
                found.append(Import(name, target, node.lineno, in_function, "#" in lines[node.lineno - 1]))
    return tuple(found)


def _walk(node: ast.AST, in_function: bool):
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            yield child, in_function
        yield from _walk(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)))


def _targets(node: ast.AST) -> List[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    assert node.level == 0, "relative imports: write them absolute"
    submodules = [f"{node.module}.{alias.name}" for alias in node.names if f"{node.module}.{alias.name}" in modules()]
    return submodules or [node.module]


def ours(module: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in (p.replace("/", ".") for p in PACKAGES))


def layer_of(name: str) -> int:
    for index, (_, units, _) in enumerate(LAYERS):
        if name in units:
            return index
    raise AssertionError(f"{name} is in no layer: add it to LAYERS in tests/test_layers.py")


@lru_cache(maxsize=None)
def heavy_modules() -> Set[str]:
    """Our modules that import a HEAVY one at their top, themselves or through another of ours."""
    top = defaultdict(set)
    for i in imports():
        if not i.in_function:
            top[i.source].add(i.target)
    heavy = {m for m, targets in top.items() if any(t.split(".")[0] in HEAVY for t in targets)}
    while True:
        more = {m for m, targets in top.items() if m not in heavy and targets & heavy}
        if not more:
            return heavy
        heavy |= more


def unit_edges() -> Dict[str, Set[str]]:
    edges = defaultdict(set)
    for i in imports():
        if ours(i.target) and unit(i.source) != unit(i.target):
            edges[unit(i.source)].add(unit(i.target))
    return edges


def test_every_unit_imports_only_from_the_layers_below_it():
    wrong = []
    for i in imports():
        if not ours(i.target) or unit(i.source) == unit(i.target) or unit(i.target) == "mnist_cnn":
            continue
        below = layer_of(unit(i.target)) < layer_of(unit(i.source))
        if not below:
            where = "the same layer" if layer_of(unit(i.target)) == layer_of(unit(i.source)) else "a higher layer"
            wrong.append(f"{modules()[i.source].relative_to(ROOT)}:{i.line} imports {i.target}, from {where}")
    assert not wrong, "\n".join(wrong)


def test_no_module_imports_itself_back_within_a_unit():
    """Modules of one subpackage may import each other, but never in a loop."""
    graph = defaultdict(set)
    for i in imports():
        if ours(i.target) and i.target in modules() and unit(i.source) == unit(i.target) and i.source != i.target:
            graph[i.source].add(i.target)
    state: Dict[str, int] = {}

    def visit(node: str, path: List[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            assert state.get(nxt) != 1, "import cycle: " + " -> ".join(path + [node, nxt])
            if nxt not in state:
                visit(nxt, path + [node])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])


def test_imports_inside_functions_are_heavy_modules_with_a_reason():
    wrong = []
    for i in imports():
        if not i.in_function:
            continue
        heavy = i.target.split(".")[0] in HEAVY + OPTIONAL or (ours(i.target) and i.target in heavy_modules())
        if not heavy or not i.commented:
            why = "a comment saying why" if heavy else "a reason: it is not slow to import; import it at the top"
            wrong.append(
                f"{modules()[i.source].relative_to(ROOT)}:{i.line} imports {i.target} in a function without {why}"
            )
    assert not wrong, "\n".join(wrong)


def test_the_config_checks_and_the_command_line_import_nothing_heavy_at_their_top():
    """A bad config fails before torch or MLflow loads (test_cli checks it in a fresh process too)."""
    light = ("mnist_cnn.cli.train", "mnist_cnn.config.checks", "mnist_cnn.config.tree", "mnist_cnn.sweep.callback")
    assert not set(light) & heavy_modules()


# One contract between a sweep and its jobs (docs/architecture.md, One job, one context).
HYDRA_AND_SWEEP_FILE = ("HydraConfig", "SWEEP_FILE")  # names read by config.job alone
JOB_VARIABLES = re.compile(r"^(SLURM_\w+|WORLD_SIZE|RANK|LOCAL_RANK)$")  # Slurm's and torchrun's, with TRIAL_ENV
ENTRY_POINTS = ("mnist_cnn.cli.", "hydra_plugins.")
STATUSES = {"RUNNING", "FINISHED", "KILLED", "FAILED", "SCHEDULED"}  # MLflow's: spelled by tracking.states alone
SEAMS = ("job_overrides", "sweep_info", "sweep_pruner", "train_epoch")  # what tests once monkeypatched to reach a run


def _sources() -> Dict[str, str]:
    return {name: path.read_text(encoding="utf-8") for name, path in modules().items()}


def _job_facts(tree: ast.AST) -> List[Tuple[int, str]]:
    """Where a module names Hydra's config or the sweep file, or reads a job's variable from the
    environment (Slurm's, torchrun's, the Optuna trial's)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id in HYDRA_AND_SWEEP_FILE:
            found.append((node.lineno, node.id))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and JOB_VARIABLES.match(node.value):
            found.append((node.lineno, node.value))
        elif (
            isinstance(node, (ast.Call, ast.Subscript))
            and "TRIAL_ENV" in ast.unparse(node)
            and "environ" in ast.unparse(node)
        ):
            found.append((node.lineno, "the trial's variable"))
    return found


def test_what_a_job_learns_from_hydra_the_environment_and_the_sweep_file_is_read_in_one_module():
    found = [
        f"{modules()[name].relative_to(ROOT)}:{line} reads {fact}"
        for name, text in _sources().items()
        if name != "mnist_cnn.config.job"
        for line, fact in _job_facts(ast.parse(text))
    ]
    assert not found, "\n".join(found)
    assert len(_job_facts(ast.parse(_sources()["mnist_cnn.config.job"]))) >= 6  # they are read, there


def test_only_the_entry_points_read_a_jobs_context():
    callers = sorted(
        name
        for name, text in _sources().items()
        if re.search(r"\b(JobContext|SweepFile)\.read\(", text) and name != "mnist_cnn.config.job"
    )
    assert callers and all(name.startswith(ENTRY_POINTS) for name in callers), callers


def test_mlflows_run_statuses_are_spelled_only_where_states_are_written_and_read():
    found = []
    for name, text in _sources().items():
        if name == "mnist_cnn.tracking.states":
            continue
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.Constant) and node.value in STATUSES:
                found.append(f"{modules()[name].relative_to(ROOT)}:{node.lineno} spells {node.value!r}")
    assert not found, "\n".join(found)


def test_no_module_sets_mlflows_global_tracking_uri_or_experiment():
    found = [
        f"{modules()[name].relative_to(ROOT)} calls {call}"
        for name, text in _sources().items()
        for call in ("set_tracking_uri(", "set_experiment(", "set_registry_uri(")
        if call in text
    ]
    assert not found, "\n".join(found)


def test_tests_reach_a_run_through_its_api_not_through_monkeypatched_seams():
    found = [
        f"{path.relative_to(ROOT)} monkeypatches {seam}"
        for path in sorted((ROOT / "tests").rglob("*.py"))
        for seam in SEAMS
        if re.search(rf"setattr\([^)]*[\"']{seam}[\"']", path.read_text(encoding="utf-8"))
    ]
    assert not found, "\n".join(found)


def diagram() -> str:
    """The layers as a table, then a Mermaid flowchart of the units, one box per layer (top: the
    entry points), and their imports; arrows into the BASE layers are left out (every layer uses them)."""
    edges = unit_edges()
    shown = [(index, label, units) for index, (label, units, _) in enumerate(LAYERS) if units != ("__main__",)]
    lines = ["| layer | units | what they are |", "|---|---|---|"]
    lines += [f"| {label} | {', '.join(f'`{u}`' for u in units)} | {what} |" for label, units, what in reversed(LAYERS)]
    lines += ["", "```mermaid", "flowchart TB"]
    for index, label, units in reversed(shown):
        lines.append(f'  subgraph L{index}["{label}"]')
        lines += [f"    {u}" for u in units]
        lines.append("  end")
    drawn = {u for _, _, units in shown for u in units}
    for source in sorted(edges.keys() & drawn):
        for target in sorted(edges[source]):
            if target in drawn and layer_of(target) >= BASE:
                lines.append(f"  {source} --> {target}")
    lines.append("```")
    return "\n".join(lines)


def test_the_architecture_page_shows_the_imports_as_they_are():
    page = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    assert diagram() in page, (
        "docs/architecture.md is out of date: paste the output of `python -m tests.test_layers` there"
    )


if __name__ == "__main__":
    sys.stdout.write(diagram() + "\n")


# Run in a fresh process as `python -c`: `mnist-cnn-train ARGS` under a profiler that notes each
# call, into a module of the package, of a function given the config (or a node of it) by a caller
# in another module; prints how often each module was entered so, as JSON, when the process ends.
TRACE_CONFIG = """
import atexit, collections, json, os, sys
from omegaconf import DictConfig
import mnist_cnn
PACKAGE = os.path.dirname(mnist_cnn.__file__) + os.sep  # wherever the checkout or the .venv lies
entries, started = collections.Counter(), set()

def ours(frame):
    while frame is not None and not frame.f_code.co_filename.startswith(PACKAGE):
        frame = frame.f_back
    return frame

def given(frame):
    code = frame.f_code
    names = list(code.co_varnames[: code.co_argcount + code.co_kwonlyargcount])
    values = [frame.f_locals.get(name) for name in names]
    if code.co_flags & 0x04:  # *args
        values += list(frame.f_locals.get(code.co_varnames[len(names)], ()))
    return values

def profile(frame, event, arg):
    code = frame.f_code
    if event != "call" or not code.co_filename.startswith(PACKAGE):
        return
    if code.co_flags & 0x20:  # a generator (a context manager's too): its first step only, not each resumption
        if id(frame) in started:
            return
        started.add(id(frame))
    caller = ours(frame.f_back)
    from_elsewhere = caller is None or caller.f_code.co_filename != code.co_filename
    if from_elsewhere and any(isinstance(v, DictConfig) for v in given(frame)):
        entries[code.co_filename[len(PACKAGE):]] += 1

atexit.register(lambda: print("ENTRIES " + json.dumps(entries)))
sys.argv = ["mnist-cnn-train"] + sys.argv[1:]
sys.setprofile(profile)
from mnist_cnn.cli.train import main
main()
"""


@pytest.mark.slow
def test_following_the_config_from_the_command_line_enters_each_module_at_most_twice(tiny_root, store_uri, tmp_path):
    """From the command line to the end of fit, the config (or a node of it) is handed into each
    module at most twice: the story reads top to bottom instead of going back and forth."""
    command = [sys.executable, "-c", TRACE_CONFIG, f"data.root={tiny_root}", f"tracking.uri={store_uri}", *TINY]
    out = processes.run(command, tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    entries = json.loads(out.stdout.rpartition("ENTRIES ")[2])
    print(entries)
    assert "runner/train.py" in entries and "runner/record.py" in entries  # the whole story was followed
    assert max(entries.values()) <= 2, entries


def test_every_function_the_architecture_page_names_exists():
    page = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    named = sorted(set(re.findall(r"`(mnist_cnn(?:\.\w+)+)`", page)))
    assert len(named) > 30
    missing = [name for name in named if not _resolves(name)]
    assert not missing, f"docs/architecture.md names what the code does not have: {missing}"


def _resolves(dotted: str) -> bool:
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            thing = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attribute in parts[cut:]:
            if not hasattr(thing, attribute):
                return False
            thing = getattr(thing, attribute)
        return True
    return False
