# `make train` and `make test` set up .venv on first use, then run. ARGS passes Hydra overrides:
#   make train ARGS="experiment=seed_tutorial"
VENV ?= .venv
PY := $(VENV)/bin/python
ARGS ?=
PYTEST_ARGS ?=

.PHONY: install lock train test test-all test-gpu test-cluster lint format ui mlflow-server clean

install: $(VENV)/.installed

# requirements.lock pins every package the test suite passed with; pip installs them as constraints (docs/installing.md
# says why a constraints file). PIP_CONSTRAINT, not -c, so that the lock replaces a constraint pip.conf may set (this
# machine caps torch and torchvision at the builds on its disk; the lock pins those builds exactly, torchvision 0.29.2
# above the cap). torch/torchvision are pinned in pyproject.toml to the builds pip finds on local disk here.
LOCK := requirements.lock
$(VENV)/.installed: pyproject.toml $(LOCK)
	python3 -m venv $(VENV)
	PIP_CONSTRAINT=$(LOCK) $(PY) -m pip install -q --upgrade pip
	PIP_CONSTRAINT=$(LOCK) $(PY) -m pip install -q -e ".[dev]"
	touch $@

# Refreshes requirements.lock: pyproject.toml's dependencies and the dev extra, resolved afresh (no constraint) in a
# new virtual environment outside the checkout, written as `pip freeze --all` writes them (pip and setuptools, which
# torch requires, pinned too); run the whole suite on the result.
lock:
	set -e; tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	python3 -m venv "$$tmp/venv"; \
	"$$tmp/venv/bin/python" -m pip install -q --upgrade pip; \
	PIP_CONSTRAINT=/dev/null "$$tmp/venv/bin/python" -m pip install -q -e ".[dev]"; \
	{ echo "# Every package the test suite passed with. Written by \`make lock\`; \`make install\` installs from it."; \
	  echo "# A pip constraints file: PIP_CONSTRAINT=requirements.lock pip install -e '.[dev]' (docs/installing.md)."; \
	  "$$tmp/venv/bin/python" -m pip freeze --all --exclude-editable | grep -v '^#'; } > "$$tmp/lock"; \
	mv "$$tmp/lock" $(LOCK)

train: install
	$(VENV)/bin/mnist-cnn-train $(ARGS)

# The quick tier, for every edit: everything not marked slow or cluster, spread over one pytest-xdist worker per
# core (-n auto; PYTEST_ARGS="-n 0" runs it in one process); the cluster tier runs in test-cluster.
test: install
	$(PY) -m pytest -n auto -m "not slow and not cluster" $(PYTEST_ARGS)

# Everything that needs no cluster: sweeps across launchers, real servers that die, processes killed mid-run, install.
test-all: install
	$(PY) -m pytest -m "not cluster" $(PYTEST_ARGS)

# ruff (pyproject.toml [tool.ruff]): the formatter's check, then the linter (pyflakes, pycodestyle, import order,
# bugbear); CI runs it. `make format` rewrites the files and fixes what the linter can.
lint: install
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# The tests marked `gpu` (the CUDA-graph step, DDP over NCCL, runs on cuda), on a machine with a CUDA GPU;
# `make test` and `make test-all` list them as skipped where torch sees no GPU.
test-gpu: install
	$(PY) -m pytest -m gpu $(PYTEST_ARGS)

# The real engines: installs and starts a single-node Slurm and a PostgreSQL-backed MLflow server
# (apt, as root), runs the tests marked `cluster`, and stops everything it started, pass or fail.
test-cluster: install
	deploy/cluster.sh $(PY) -m pytest -m cluster $(PYTEST_ARGS)

# Serves ./mlflow.db on 127.0.0.1:5000 and prints the link that opens its runs (the Model-training view).
ui: install
	@$(VENV)/bin/mnist-cnn-runs --tracking-uri sqlite:///mlflow.db --link || true
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port 5000

# A team tracking server on 127.0.0.1:$(PORT): PostgreSQL backend (MLFLOW_BACKEND_STORE_URI, else one of its
# own in .mlflow-server/), artifacts served by the server; MNIST_CNN_SERVER_AUTH=basic-auth for passwords.
PORT ?= 5000
mlflow-server: install
	deploy/mlflow_server.sh run .mlflow-server $(PORT)

clean:
	rm -rf outputs multirun .pytest_cache
