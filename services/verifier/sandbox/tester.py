"""The HumanEval tester: a long-lived process in an envelope of its own that runs dataset tests
against a candidate process in the zygote's envelope, through two pipes that carry plain data.

Started by the pool (one per worker, on its first HumanEval job) like a zygote; the bootstrap
loader calls `main`. Per job it reads a header and the *compiled* prompt and test (the secret: the
test holds the expected values) on its protocol pipe, receives this job's two pipe ends to the
candidate over its fd socket, runs `check(candidate)` in fresh globals, where `candidate` is a
proxy that calls into the candidate process, and writes one report frame. The candidate process
(forked by the zygote, see `runners.run_candidate`) answers with encoded return values.

Why its own envelope, and why one process for many jobs: model code runs only in the zygote's
envelope. This process is in another pid namespace (and, when the service is root, runs as
another host uid), so a candidate cannot name it: it cannot signal, stop, renice, re-limit or
trace it, and no memory of it (the tests of earlier jobs included) is ever in a process where
model code runs. What a candidate controls here is the plain values it answers, decoded into
exact builtin types, so it cannot patch the checker, override `__eq__` on what the test
compares, or exit early and look like a pass. The one thing that outlives a job is this process:
each job gets fresh globals, builtins and the recursion limit are restored after it, and the
process exits (the pool starts another) after a job that did not end in a plain verdict (a
MemoryError, SystemExit, an interrupted channel), so a hostile value cannot leave a tester
half-broken for the next program.

Not covered: state a dataset test itself leaves in an imported module (tests are trusted code;
HumanEval's leave none), and a test slow enough to miss the job's deadline (the pool kills this
process then and starts another).
"""

from __future__ import annotations

import builtins
import ctypes
import gc
import io
import json
import marshal
import os
import resource
import socket
import sys
from typing import Any

from services.verifier.sandbox import codec, seccomp

FRAME_LIMIT = 256 * 1024 * 1024
ANSWER_LIMIT = 64 * 1024 * 1024
_PR_SET_DUMPABLE = 4


class CandidateError(Exception):
    """The candidate raised, exited, or returned something that is not plain data."""


def _proxy(entry: str, req: int, resp: int) -> Any:
    def candidate(*args: Any) -> Any:
        try:
            codec.write_frame(req, json.dumps({"args": codec.encode(list(args))}).encode())
            reply = json.loads(codec.read_frame(resp, ANSWER_LIMIT))
        except (EOFError, BrokenPipeError) as exc:
            raise CandidateError("the candidate process exited before answering") from exc
        if "error" in reply:
            raise CandidateError(reply["error"])
        try:
            return codec.decode(reply["value"])
        except (codec.CodecError, KeyError) as exc:
            raise CandidateError(f"malformed answer: {exc}") from None

    candidate.__name__ = entry
    return candidate


def run_test(entry: str, secret: bytes, req: int, resp: int) -> tuple[dict[str, Any], int, bool]:
    """(report, the exit code a one-shot tester would have had, whether this process may go on)."""
    glb: dict[str, Any] = {"__name__": "__tester__", "__builtins__": builtins}
    try:
        prompt_code, test_code = marshal.loads(secret)
        # The prompt is dataset code (helpers such as HumanEval/38's encode_cyclic live there).
        exec(prompt_code, glb)
        proxy = _proxy(entry, req, resp)
        # Some tests call the entry point by name (HumanEval/33); in the original harness that
        # name is the completion's function, so here it is the proxy too.
        glb[entry] = proxy
        exec(test_code, glb)
        glb["check"](proxy)
    except CandidateError as exc:
        return {"failed": "CandidateError", "message": str(exc)[:500]}, 0, True
    except AssertionError as exc:
        line = _test_line(exc)
        return {"failed": "AssertionError", "line": line, "message": str(exc)[:300]}, 0, True
    except MemoryError:
        return {"error": "MemoryError", "message": ""}, 1, False
    except Exception as exc:  # the test raised on the candidate's answer (e.g. None - 1)
        return {"error": type(exc).__name__, "message": str(exc)[:300]}, 1, True
    except BaseException as exc:  # SystemExit from the test: no verdict, and a fresh tester next
        code = exc.code if isinstance(exc, SystemExit) and isinstance(exc.code, int) else 1
        return {}, code, False
    finally:
        glb.clear()  # the test's objects go now, not at the next job
    return {"passed": True}, 0, True


def _test_line(exc: BaseException) -> int | None:
    """The innermost line of the dataset test in the traceback (walked directly: extract_tb also
    stats a source file for every frame: ~4% of this process's time on failing programs)."""
    line, tb = None, exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<test>":
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


class Tester:
    def __init__(self, config: dict[str, Any], proto_in: int, proto_out: int, channel: socket.socket) -> None:
        self.cfg = config
        self.proto_in, self.proto_out, self.channel = proto_in, proto_out, channel
        self.builtins = dict(vars(builtins))
        self.recursion_limit = sys.getrecursionlimit()

    def _send(self, obj: dict[str, Any]) -> None:
        codec.write_frame(self.proto_out, json.dumps(obj).encode())

    def serve(self) -> None:
        on = bool(self.cfg.get("seccomp")) and seccomp.supported()
        self._send({"ready": True, "pid1": os.getpid() == 1, "uid": os.getuid(), "seccomp": on})
        while True:
            try:
                header = json.loads(codec.read_frame(self.proto_in, FRAME_LIMIT))
                secret = codec.read_frame(self.proto_in, FRAME_LIMIT) if header.get("secret_len") else b""
            except EOFError:
                return
            _, fds, _, _ = socket.recv_fds(self.channel, 1, 2)
            if len(fds) != 2:
                self._send({"error": "expected the two pipe ends of the candidate channel"})
                return
            _set_memory(int(header["memory_mb"]))
            try:
                report, code, keep = run_test(str(header["entry_point"]), secret, fds[0], fds[1])
            finally:
                for fd in fds:
                    os.close(fd)  # the candidate sees EOF and exits
            keep = keep and self._restore()
            self._send({"report": report, "exit_code": code, "restart": not keep})
            if not keep:
                return

    def _restore(self) -> bool:
        """Builtins and recursion limit as they were before the first job; False if that failed."""
        sys.setrecursionlimit(self.recursion_limit)
        current = vars(builtins)
        if current != self.builtins:
            current.clear()
            current.update(self.builtins)
        return current == self.builtins


def _set_memory(memory_mb: int) -> None:
    """The job's address-space limit as the soft limit (the hard one stays, so the next may differ)."""
    soft = memory_mb * 1024 * 1024
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(
        resource.RLIMIT_AS, (soft if hard == resource.RLIM_INFINITY else min(soft, hard), hard)
    )


def main(config: dict[str, Any]) -> None:
    """Entry point called by the bootstrap loader inside the tester's envelope."""
    proto_in, proto_out = os.dup(0), os.dup(1)
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)  # a test's print must not corrupt the protocol; stderr goes to the pool's log
    sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False), encoding="utf-8", errors="replace")
    sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), encoding="utf-8", errors="replace")
    ctypes.CDLL(None).prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0)
    channel = socket.socket(fileno=int(config["fd_channel"]))
    if config.get("cpus"):
        # The candidate, its tester and this process talk in many short round trips; a wake-up
        # on another core cost ~8x one on the same core on a 2-vCPU VM (53-61 vs 6-8 us).
        os.sched_setaffinity(0, config["cpus"])
    for path in config.get("sys_path", []):
        sys.path.append(path)
    for module in config.get("preload", []):
        __import__(module)
    uid = config.get("drop_uid")
    if uid is not None:  # rlimits mode as root: a uid of its own, never the programs' uid
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
    for res in (resource.RLIMIT_CORE, resource.RLIMIT_MEMLOCK, resource.RLIMIT_MSGQUEUE):
        resource.setrlimit(res, (0, 0))
    gc.collect()
    gc.freeze()
    if config.get("seccomp") and seccomp.supported():
        seccomp.install(None)
    Tester(config, proto_in, proto_out, channel).serve()
