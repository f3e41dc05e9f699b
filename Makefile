# `make train` and `make test` set up .venv on first use, then run. ARGS passes Hydra overrides:
#   make train ARGS="experiment=seed_tutorial"
VENV ?= .venv
PY := $(VENV)/bin/python
ARGS ?=
PYTEST_ARGS ?=

.PHONY: install train test test-all test-gpu test-cluster lint format ui mlflow-server clean

install: $(VENV)/.installed

# torch/torchvision are pinned in pyproject.toml to the builds pip finds on local disk here.
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

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
