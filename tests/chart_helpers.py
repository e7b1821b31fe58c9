"""Helpers for the Helm chart in charts/restem: offline rendering, pod env, schema sync, local stack.

Rendering uses helm-python-sdk (Helm's own Go library through ctypes), so no helm binary, cluster
or network is needed. Also a small CLI:

    python -m tests.chart_helpers sync-schema [--check]
        rewrite (or check) the `<svc>.config` parts of values.schema.json from the services'
        pydantic configs, so a typo in a service setting fails at `helm install`, not at pod start.
    python -m tests.chart_helpers local-stack up --values FILE [--values FILE...] --state DIR
    python -m tests.chart_helpers local-stack down --state DIR
        run the five services as local processes with the exact config files and environment the
        chart gives their pods (only addresses are overridden), against a local nats-server
        started with the chart's nats.conf and a SeaweedFS S3 holding the chart's credentials.
        This is the kind test's cluster part as far as it goes without Docker (tests/kind).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import copy
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "restem"
SCHEMA = CHART / "values.schema.json"
SERVICES = ("coordinator", "verifier", "sampler", "trainer", "evaluator")
# Fields of each service config that the chart sets itself; `<svc>.config` may not hold them.
CHART_OWNED = {
    "grpc",
    "nats",
    "store",
    "log_level",
    "log_format",
    "metrics",
    "device",
    "cache_dir",
    "work_dir",
    "verifier_address",
    "nproc",
}

# Every Prometheus metric the services export, by exposition name: counters with `_total`,
# histograms by base name (their `_bucket`/`_sum`/`_count` series), gauges as they are. The Grafana
# dashboard (charts/restem/dashboards/restem.json) may use only these, and what the services
# register must be exactly this set.
METRIC_NAMES = frozenset(
    {
        # every service (shared/telemetry.py)
        "restem_service_info",
        "restem_jobs_started_total",
        "restem_jobs_completed_total",
        "restem_jobs_failed_total",
        "restem_jobs_redelivered_total",
        "restem_job_duration_seconds",
        "restem_jobs_in_flight",
        "restem_store_request_seconds",
        "restem_store_errors_total",
        "restem_store_bytes_total",
        "restem_nats_connected",
        "restem_nats_disconnects_total",
        "restem_nats_reconnects_total",
        # coordinator (the work-queue backlog included)
        "restem_coordinator_runs",
        "restem_coordinator_events_total",
        "restem_coordinator_jobs_published_total",
        "restem_coordinator_phase_seconds",
        "restem_coordinator_filter_seconds",
        "restem_queue_pending_jobs",
        "restem_queue_unacked_jobs",
        # sampler
        "restem_sampler_samples_total",
        "restem_sampler_generated_tokens_total",
        "restem_sampler_finish_reasons_total",
        "restem_sampler_tokens_per_second",
        "restem_sampler_generate_seconds",
        # verifier
        "restem_verifier_verdicts_total",
        "restem_verifier_programs_total",
        "restem_verifier_sandbox_workers",
        "restem_verifier_sandbox_queue_depth",
        "restem_verifier_sandbox_runs_total",
        "restem_verifier_zygote_restarts_total",
        "restem_verifier_zygote_start_failures_total",
        "restem_verifier_cache_hits_total",
        "restem_verifier_cache_misses_total",
        "restem_verifier_cache_store_errors_total",
        # trainer
        "restem_trainer_steps_total",
        "restem_trainer_tokens_total",
        "restem_trainer_input_tokens_total",
        "restem_trainer_tokens_per_second",
        "restem_trainer_loss",
        "restem_trainer_learning_rate",
        "restem_trainer_step_seconds",
        "restem_trainer_mfu_ratio",
        "restem_trainer_gpu_memory_bytes",
        "restem_trainer_validation_reward",
        # evaluator
        "restem_evaluator_problems_total",
        "restem_evaluator_correct_total",
        "restem_evaluator_samples_total",
        "restem_evaluator_problems_per_second",
    }
)


def config_model(service: str) -> type:
    import importlib

    module = importlib.import_module(f"services.{service}.config")
    return getattr(module, f"{service.capitalize()}Config")  # type: ignore[no-any-return]


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Values-file layering as `helm -f a -f b` does it: maps merge, everything else is replaced."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_values(*files: str | Path, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for f in files:
        path = Path(f) if Path(f).is_absolute() else CHART / f
        values = deep_merge(values, yaml.safe_load(path.read_text()) or {})
    return deep_merge(values, overrides or {})


def render(
    values: dict[str, Any] | None = None, *, name: str = "restem", namespace: str = "ml"
) -> dict[str, str]:
    """Template path -> rendered text (what `helm template` prints), after the schema check."""
    import helm_python

    with helm_python.Chart.load(CHART) as chart:
        chart.validate_schema(values or {})
        return dict(chart.render(values or {}, name=name, namespace=namespace, is_install=True))


def manifests(rendered: dict[str, str]) -> list[dict[str, Any]]:
    """Every Kubernetes object in a render (NOTES.txt and empty documents left out)."""
    docs: list[dict[str, Any]] = []
    for path, text in sorted(rendered.items()):
        if path.endswith("NOTES.txt"):
            continue
        docs += [d for d in yaml.safe_load_all(text) if d]
    return docs


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def component(doc: dict[str, Any]) -> str:
    return str(doc["metadata"]["labels"].get("app.kubernetes.io/component", ""))


def secret_data(docs: list[dict[str, Any]]) -> dict[tuple[str, str], str]:
    """(secret name, key) -> decoded value, for the Secrets the chart renders."""
    out = {}
    for name, secret in by_kind(docs, "Secret").items():
        for key, value in (secret.get("data") or {}).items():
            out[(name, key)] = base64.b64decode(value).decode()
    return out


def container_env(container: dict[str, Any], secrets: dict[tuple[str, str], str]) -> dict[str, str]:
    """The environment a container gets, secretKeyRefs resolved (KeyError if one is missing)."""
    env = {}
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = str(var["value"])
        elif "fieldRef" in var["valueFrom"]:  # only metadata.name is used (NATS server_name)
            env[var["name"]] = "restem-nats-0"
        else:
            ref = var["valueFrom"]["secretKeyRef"]
            env[var["name"]] = secrets[(ref["name"], ref["key"])]
    return env


def service_config_text(docs: list[dict[str, Any]], service: str) -> str:
    maps = {
        component(d): d
        for d in docs
        if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-config")
    }
    return str(maps[service]["data"]["config.yaml"])


# ---- values.schema.json: the `<svc>.config` definitions come from the pydantic models ----


def _inline_refs(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, dict):
        if "$ref" in node:
            return _inline_refs(defs[node["$ref"].rsplit("/", 1)[-1]], defs)
        # Titles are noise; formats such as "path" are not JSON Schema formats Helm knows.
        return {k: _inline_refs(v, defs) for k, v in node.items() if k not in ("title", "format")}
    if isinstance(node, list):
        return [_inline_refs(v, defs) for v in node]
    return node


def config_schema(service: str) -> dict[str, Any]:
    """JSON schema of `<service>.config`: the service's own settings minus what the chart sets."""
    full = config_model(service).model_json_schema()
    defs = full.get("$defs", {})
    props = {k: _inline_refs(v, defs) for k, v in full["properties"].items() if k not in CHART_OWNED}
    for prop in props.values():  # nested models are as strict as the service is
        if prop.get("type") == "object" and "properties" in prop:
            prop.setdefault("additionalProperties", False)
    return {
        "type": "object",
        "description": f"Other fields of services/{service}/config.py (generated: python -m tests.chart_helpers sync-schema).",
        "additionalProperties": False,
        "properties": props,
    }


def dump_json(node: Any, indent: int = 0) -> str:
    """JSON with small objects and lists on one line, so the schema reads like the values file."""
    flat = json.dumps(node)
    if len(flat) + indent <= 100 or not isinstance(node, (dict, list)) or not node:
        return flat
    pad = " " * (indent + 2)
    if isinstance(node, dict):
        items = [f"{pad}{json.dumps(k)}: {dump_json(v, indent + 2)}" for k, v in node.items()]
        return "{\n" + ",\n".join(items) + "\n" + " " * indent + "}"
    items = [pad + dump_json(v, indent + 2) for v in node]
    return "[\n" + ",\n".join(items) + "\n" + " " * indent + "]"


def sync_schema(*, write: bool) -> list[str]:
    """Services whose schema part is stale; rewritten in place when `write`."""
    schema = json.loads(SCHEMA.read_text())
    stale = []
    for service in SERVICES:
        key = f"{service}Config"
        want = config_schema(service)
        if schema["$defs"].get(key) != want:
            stale.append(service)
            schema["$defs"][key] = want
    if stale and write:
        SCHEMA.write_text(dump_json(schema) + "\n")
    return stale


# ---- local stack with the chart's configs ----


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pod_spec(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    doc = next(d for d in by_kind(docs, kind).values() if component(d) == name)
    return doc["spec"]["template"]["spec"]  # type: ignore[no-any-return]


class _LocalStack:
    """Processes started for `local-stack up`, recorded in stack.json as each starts (for `down`)."""

    def __init__(self, state: Path) -> None:
        self.state, self.procs = state, {}  # type: ignore[var-annotated]
        self.info: dict[str, Any] = {"pids": [], "addresses": {}}
        (state / "logs").mkdir(parents=True, exist_ok=True)

    def log(self, name: str) -> Path:
        return self.state / "logs" / f"{name}.log"

    def spawn(self, name: str, cmd: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        with self.log(name).open("ab") as out:
            proc = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        self.procs[name] = proc
        self.info["pids"].append(proc.pid)
        self.save()
        return proc

    def save(self) -> None:
        (self.state / "stack.json").write_text(json.dumps(self.info, indent=2))

    def check_alive(self, name: str) -> None:
        if self.procs[name].poll() is not None:
            tail = self.log(name).read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{name} exited with {self.procs[name].returncode}; log tail:\n{tail}")


def local_stack_up(values_files: list[str], state: Path, timeout_s: float = 300.0) -> str:
    """Start NATS, S3 and the five services as the chart configures their pods; the coordinator's address."""
    import socket

    from shared.client.client import check_health
    from shared.client.stack import GRPC_NAMES
    from tests.fixtures import s3 as s3fix

    docs = manifests(render(load_values(*values_files)))
    secrets = secret_data(docs)
    stack = _LocalStack(state)
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("RESTEM_")}
    # SIGTERM (a killed kind_test.sh) must still run the cleanup below.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        # NATS: the chart's nats.conf (paths moved here) and args ($(VAR) expanded as the kubelet does).
        nats_pod = _pod_spec(docs, "StatefulSet", "nats")
        nats_ctr = nats_pod["containers"][0]
        nats_env = container_env(nats_ctr, secrets)
        conf = by_kind(docs, "ConfigMap")[nats_pod["volumes"][0]["configMap"]["name"]]["data"]["nats.conf"]
        conf = conf.replace("store_dir: /data", f"store_dir: {state / 'nats'}").replace("/tmp/", f"{state}/")
        (state / "nats.conf").write_text(conf)
        args = [a.replace("$(NATS_USER)", nats_env.get("NATS_USER", "")) for a in nats_ctr.get("args", [])]
        args = [a.replace("$(NATS_PASSWORD)", nats_env.get("NATS_PASSWORD", "")) for a in args]
        nats_port = _free_port()
        nats_bin = str(Path(sys.executable).parent / "nats-server")
        cmd = [
            nats_bin,
            "-c",
            str(state / "nats.conf"),
            "-a",
            "127.0.0.1",
            "-p",
            str(nats_port),
            "-m",
            "0",
            *args,
        ]
        stack.spawn("nats", cmd, {**base_env, **nats_env})
        deadline = time.monotonic() + 15
        while socket.socket().connect_ex(("127.0.0.1", nats_port)) != 0:
            stack.check_alive("nats")
            if time.monotonic() > deadline:
                raise RuntimeError(f"nats-server not listening on {nats_port} after 15s")
            time.sleep(0.1)
        # S3: SeaweedFS standing in for MinIO, holding the credentials from the chart's Secret.
        store_env = container_env(_pod_spec(docs, "Deployment", "coordinator")["containers"][0], secrets)
        access, secret = store_env["RESTEM_S3_ACCESS_KEY"], store_env["RESTEM_S3_SECRET_KEY"]
        identity = {"name": "restem", "credentials": [{"accessKey": access, "secretKey": secret}]}
        identity["actions"] = ["Admin", "Read", "Write", "List", "Tagging"]
        (state / "identities.json").write_text(json.dumps({"identities": [identity]}))
        (state / "s3").mkdir(exist_ok=True)
        weed_cmd, s3_port = s3fix._weed_command(
            s3fix.weed_binary() or "weed", state / "s3", state / "identities.json"
        )
        weed = stack.spawn("s3", weed_cmd, base_env)
        s3 = s3fix.S3Server(f"127.0.0.1:{s3_port}", access, secret, stack.log("s3"))
        s3fix._wait_ready(s3, weed)
        # The five services: the pod's command, config file and env; only addresses point here.
        addresses = stack.info["addresses"]
        token = secrets.get(("restem-api-token", "token"))
        if token:  # the CLI finds the API token here, as a client of the cluster would get it
            (state / "api-token").write_text(token)
            (state / "api-token").chmod(0o600)
        for service in SERVICES:
            ctr = _pod_spec(docs, "Deployment", service)["containers"][0]
            cfg = state / "config" / f"{service}.yaml"
            cfg.parent.mkdir(exist_ok=True)
            cfg.write_text(service_config_text(docs, service))
            port, p = _free_port(), f"RESTEM_{service.upper()}__"
            env = {**base_env, **container_env(ctr, secrets), "HOME": str(state / "home")}
            env |= {"HF_HOME": str(state / "home" / "hf"), "MPLCONFIGDIR": str(state / "home" / "mpl")}
            env |= {p + "GRPC__HOST": "127.0.0.1", p + "GRPC__PORT": str(port)}
            env |= {p + "NATS__URL": f"nats://127.0.0.1:{nats_port}", p + "STORE__ENDPOINT": s3.endpoint}
            # Five services on one host: each metrics endpoint on a free port, written to a file.
            metrics_file = state / "metrics" / f"{service}.port"
            metrics_file.unlink(missing_ok=True)
            env |= {p + "METRICS__HOST": "127.0.0.1", p + "METRICS__PORT": "0"}
            env |= {p + "METRICS__PORT_FILE": str(metrics_file)}
            if service in ("sampler", "trainer", "evaluator"):
                env[p + "CACHE_DIR"] = str(state / "cache" / service)
            if service == "trainer":
                env[p + "WORK_DIR"] = str(state / "work")
            if service in ("evaluator", "trainer"):  # the trainer scores validation answers too
                env[p + "VERIFIER_ADDRESS"] = addresses["verifier"]
            cmd = [sys.executable if c == "python" else c for c in ctr["command"]] + [
                ctr["args"][0],
                str(cfg),
            ]
            stack.spawn(service, cmd, env)
            addresses[service] = f"127.0.0.1:{port}"
            stack.save()
        deadline = time.monotonic() + timeout_s
        for service, address in addresses.items():
            while check_health(address, GRPC_NAMES[service]) != "SERVING":
                stack.check_alive(service)
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"{service} is not SERVING after {timeout_s:.0f}s (see {stack.log(service)})"
                    )
                time.sleep(0.5)
        for service in addresses:  # where to scrape each service (stack.json "metrics")
            port_file = state / "metrics" / f"{service}.port"
            if port_file.is_file():
                stack.info.setdefault("metrics", {})[service] = f"127.0.0.1:{port_file.read_text().strip()}"
        stack.save()
    except BaseException:
        local_stack_down(state)
        raise
    return str(addresses["coordinator"])


def local_stack_down(state: Path) -> None:
    path = state / "stack.json"
    pids = json.loads(path.read_text())["pids"] if path.is_file() else []
    for pid in reversed(pids):  # services first, NATS last
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and any(_alive(pid) for pid in pids):
        time.sleep(0.2)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
    path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return os.waitpid(pid, os.WNOHANG) == (0, 0)
    except ChildProcessError:
        return True  # not our child (down runs in another process): kill(0) succeeded
    except ProcessLookupError:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.chart_helpers")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("sync-schema", help="regenerate the <svc>.config parts of values.schema.json")
    p.add_argument("--check", action="store_true", help="only report; exit 1 when stale")
    p = sub.add_parser("local-stack", help="the services as processes with the chart's configs")
    p.add_argument("action", choices=["up", "down"])
    p.add_argument("--values", action="append", default=[], help="values file (repeatable)")
    p.add_argument("--state", type=Path, required=True)
    args = parser.parse_args()
    if args.command == "sync-schema":
        stale = sync_schema(write=not args.check)
        print(
            ("stale: " if args.check else "rewritten: ") + ", ".join(stale) if stale else "schema is current"
        )
        sys.exit(1 if stale and args.check else 0)
    if args.action == "up":
        print(local_stack_up(args.values, args.state))
    else:
        local_stack_down(args.state)


if __name__ == "__main__":
    main()
