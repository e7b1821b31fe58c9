"""The parent's side of one envelope process (a zygote or a tester), and what a program's run returns.

Frames on the envelope's stdin/stdout (4-byte length, JSON), file descriptors over a socket pair;
every read has a deadline, and anything malformed is a `SandboxError` (the envelope is replaced).
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from services.verifier.sandbox import envelope
from services.verifier.sandbox.envelope import EnvelopeSpec

_REPLY_LIMIT = 256 * 1024 * 1024


class SandboxError(RuntimeError):
    """The sandbox (not the program) failed: zygote crashed, hung or could not start."""


@dataclass
class ProcResult:
    exit_code: int | None
    signal: int | None
    cpu_s: float | None
    maxrss_kb: int | None
    stdout: str
    stdout_bytes: int
    stderr: str
    report: dict[str, Any] | None
    report_error: str = ""

    @classmethod
    def parse(cls, raw: dict[str, Any]) -> ProcResult:
        text, report, err = raw.get("report") or "", None, ""
        if text:
            # The report frame was written by code in the sandbox: parse it defensively.
            try:
                report = json.loads(text)
                if not isinstance(report, dict):
                    report, err = None, "report is not an object"
            except (ValueError, RecursionError):
                err = "malformed report"
        return cls(
            raw.get("exit_code"),
            raw.get("signal"),
            raw.get("cpu_s"),
            raw.get("maxrss_kb"),
            str(raw.get("stdout", "")),
            int(raw.get("stdout_bytes", 0)),
            str(raw.get("stderr", "")),
            report,
            err,
        )


@dataclass
class RunResult:
    """How one program (or HumanEval's tester + candidate pair) ended."""

    timed_out: bool
    output_limit: bool
    wall_s: float
    procs: dict[str, ProcResult]

    @property
    def main(self) -> ProcResult:
        return next(iter(self.procs.values()))


class EnvelopeProcess:
    """One envelope process (a zygote or a tester): its frame protocol on stdin/stdout and its end
    of the socket pair that carries file descriptors; every read has a deadline."""

    def __init__(self, spec: EnvelopeSpec, start_timeout_s: float, launcher: ThreadPoolExecutor) -> None:
        self.spec = spec
        self.name = spec.main
        self.work_root = envelope.make_work_root(spec)
        self.channel, theirs = socket.socketpair()
        # bwrap's --die-with-parent is PR_SET_PDEATHSIG, which fires when the *thread* that
        # started it exits: every envelope is started by the pool's one long-lived launcher thread.
        try:
            self.proc = launcher.submit(envelope.launch, spec, self.work_root, theirs.fileno()).result(
                timeout=start_timeout_s
            )
            payload = envelope.bootstrap_payload(spec, self.work_root, theirs.fileno())
        finally:
            theirs.close()
        self.jobs = 0
        self._stderr: list[bytes] = []
        self._stderr_done = threading.Thread(target=self._drain_stderr, daemon=True)
        self._stderr_done.start()
        try:
            self._write(payload)
            self.ready = self.recv(time.monotonic() + start_timeout_s)
        except SandboxError as exc:
            self.kill()
            self._stderr_done.join(1.0)  # what it said before it died
            raise SandboxError(
                f"{spec.mode} sandbox ({self.name}) did not start: {exc}; exit status "
                f"{self.proc.returncode}; stderr: {self.stderr_tail()}"
            ) from None

    def _drain_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in iter(self.proc.stderr.readline, b""):
            self._stderr = [*self._stderr[-20:], line]

    def stderr_tail(self) -> str:
        return b"".join(self._stderr).decode("utf-8", "replace")[-2000:]

    def alive(self) -> bool:
        return self.proc.poll() is None

    def _write(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        fd = self.proc.stdin.fileno()
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(fd, view) :]
        except OSError as exc:
            raise SandboxError(f"{self.name} is gone: {exc}") from None

    def send(self, header: dict[str, Any], secret: bytes | None = None, fds: tuple[int, ...] = ()) -> None:
        """One request: `fds` over the socket first, then the header frame and the secret frame."""
        body = json.dumps({**header, "secret_len": len(secret or b""), "fds": len(fds)}).encode()
        frames = len(body).to_bytes(4, "big") + body
        if secret:
            frames += len(secret).to_bytes(4, "big") + secret
        if fds:
            try:
                socket.send_fds(self.channel, [b"F"], list(fds))
            except OSError as exc:
                raise SandboxError(f"{self.name} is gone: {exc}") from None
        self._write(frames)

    def request(self, header: dict[str, Any], secret: bytes | None, timeout_s: float) -> dict[str, Any]:
        self.send(header, secret)
        return self.recv(time.monotonic() + timeout_s)

    def recv(self, deadline: float) -> dict[str, Any]:
        """One reply frame. The protocol is strictly request/reply, so a read never takes more
        than this frame: most replies arrive whole in the first read."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        buf = bytearray()
        need = 4
        while len(buf) < need:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise SandboxError(f"{self.name} did not answer in time")
            chunk = os.read(fd, max(need - len(buf), 1 << 16))
            if not chunk:
                raise SandboxError(f"{self.name} exited (stderr: {self.stderr_tail()})")
            buf += chunk
            if need == 4 and len(buf) >= 4:
                need = 4 + int.from_bytes(buf[:4], "big")
                if need - 4 > _REPLY_LIMIT:
                    raise SandboxError(f"{self.name} sent an oversized frame")
        if len(buf) > need:
            raise SandboxError(f"{self.name} sent more than one frame")
        try:
            reply = json.loads(bytes(buf[4:need]))
        except ValueError:
            raise SandboxError(f"{self.name} sent a malformed frame") from None
        if not isinstance(reply, dict) or "error" in reply:
            raise SandboxError(f"{self.name} error: {reply!r:.300}")
        return reply

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)
        for stream in (self.proc.stdin, self.proc.stdout):
            with contextlib.suppress(OSError):
                stream and stream.close()
        self.channel.close()
        shutil.rmtree(self.work_root, ignore_errors=True)


NO_REPORT = ProcResult(None, None, None, None, "", 0, "", None)
