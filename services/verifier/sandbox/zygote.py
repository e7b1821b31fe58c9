"""The warm worker that runs inside the envelope and forks one limited child per program.

Started once per pool worker (by `envelope.launch`), it answers frames from the pool on its
protocol fds. For each `run` it forks the process of one program (see `runners`) in a new session
with rlimits, a non-root uid, seccomp and a private working directory; it reads its output *while
it runs* and kills it at the output cap or the wall-clock deadline; then it kills every process
left in the sandbox (as pid 1 of its pid namespace with `kill(-1)`, else as a child subreaper by
walking its children) and removes what the program wrote.

A HumanEval program is one process here, the candidate: the tests run in the tester's own
envelope (`tester`), and this zygote only receives the candidate's two pipe ends over its fd
socket, so the expected values never enter this envelope at all.

Secrets: a custom checker's expected output arrives as a separate frame read into a bytearray that
is zeroed right after the trusted checker child is forked, so model code forked later never finds
it in the zygote's memory. Not hidden from model code: other programs' code and test *inputs*
this zygote handled before (they are not secret; expected outputs never enter the sandbox for
stdin and call problems).
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import gc
import json
import os
import resource
import select
import shutil
import signal
import socket
import stat
import sys
import time
from typing import Any

from services.verifier.sandbox import codec, runners, seccomp

FRAME_LIMIT = 256 * 1024 * 1024
STDERR_KEEP = 4096
SPREAD_AFTER_S = 0.02  # a pinned program still running after this may use any CPU (`supervise`)
_libc = ctypes.CDLL(None, use_errno=True)
_fork_with_gil = ctypes.PyDLL(None, use_errno=True).fork  # PyDLL: the GIL stays held across it
_PR_SET_PDEATHSIG, _PR_SET_DUMPABLE, _PR_SET_CHILD_SUBREAPER = 1, 4, 36


class Zygote:
    def __init__(self, config: dict[str, Any], proto_in: int, proto_out: int) -> None:
        self.cfg = config
        self.proto_in, self.proto_out = proto_in, proto_out
        self.pid1 = os.getpid() == 1
        self.secret = bytearray(0)
        self.jobs = 0
        self.root = config["work_root"]
        self.channel = socket.socket(fileno=int(config["fd_channel"]))
        self.devnull = os.open(os.devnull, os.O_RDONLY)  # stdin of programs given none

    # -- protocol -------------------------------------------------------------------------
    def serve(self) -> None:
        self._send({"ready": True, "pid1": self.pid1, "uid": os.getuid(), "seccomp": self._seccomp_on()})
        while True:
            try:
                header = json.loads(codec.read_frame(self.proto_in, FRAME_LIMIT))
            except EOFError:
                return
            secret_len = self._read_secret(header.get("secret_len", 0))
            fds = self._read_fds(int(header.get("fds", 0)))
            op = header.get("op")
            if op == "ping":
                self._send({"pong": True, "jobs": self.jobs})
            elif op == "run":
                self._send(self.run(header["spec"], secret_len, fds))
            else:
                self._send({"error": f"unknown op {op!r}"})

    def _send(self, obj: dict[str, Any]) -> None:
        codec.write_frame(self.proto_out, json.dumps(obj).encode())

    def _read_secret(self, size: int) -> int:
        if size <= 0:
            return 0
        if len(self.secret) < size:
            self._wipe_secret(len(self.secret))  # the old buffer is freed, not zeroed, otherwise
            self.secret = bytearray(size)
        head = bytearray(4)
        codec.read_exact_into(self.proto_in, head, 4)
        codec.read_exact_into(self.proto_in, self.secret, size)
        return size

    def _read_fds(self, count: int) -> list[int]:
        """File descriptors the pool passed for this job (the candidate's channel to its tester)."""
        if count <= 0:
            return []
        _, fds, _, _ = socket.recv_fds(self.channel, 1, count)
        if len(fds) != count:
            for fd in fds:
                os.close(fd)
            raise RuntimeError(f"expected {count} file descriptors, got {len(fds)}")
        return fds

    def _wipe_secret(self, size: int) -> None:
        if size <= 0:
            return
        ctypes.memset((ctypes.c_char * len(self.secret)).from_buffer(self.secret), 0, size)

    def _seccomp_on(self) -> bool:
        return bool(self.cfg.get("seccomp")) and seccomp.supported()

    # -- one program ----------------------------------------------------------------------
    def run(self, spec: dict[str, Any], secret_len: int, fds: list[int]) -> dict[str, Any]:
        self.jobs += 1
        jobdir = os.path.join(self.root, f"job-{self.jobs}")
        os.mkdir(jobdir, 0o700)
        if self.cfg.get("drop_uid") is not None:
            os.chown(jobdir, self.cfg["drop_uid"], self.cfg["drop_uid"])
        started = time.monotonic()
        proc: Proc | None = None
        timed_out = over = False
        try:
            proc = self._spawn_program(spec, jobdir, secret_len, fds)
            spread = (started + SPREAD_AFTER_S, self.cfg["spread_cpus"]) if self.cfg.get("cpus") else None
            timed_out, over = supervise(
                proc, started + float(spec["limits"]["wall_s"]), spec["limits"], spread
            )
        finally:
            self._wipe_secret(secret_len)
            for fd in fds:  # only those no child was forked with (the list is emptied then)
                os.close(fd)
            sweep(self.pid1, proc)
            self._clean(jobdir)
        assert proc is not None  # _spawn_program returned, or we did not get here
        return {
            "wall_s": time.monotonic() - started,
            "timed_out": timed_out,
            "output_limit": over,
            "procs": {proc.role: proc.result()},
        }

    def _spawn_program(self, spec: dict[str, Any], jobdir: str, secret_len: int, fds: list[int]) -> Proc:
        mode = spec["mode"]
        if mode == "humaneval":
            # The tester runs in its own envelope; `fds` are the candidate's ends of its channel.
            if len(fds) != 2:
                raise RuntimeError("a humaneval job needs the candidate's two pipe ends")
            _precompile(spec["prompt"] + spec["code"], "<candidate>")
            cand = self._spawn(spec, "candidate", jobdir, 0, {4: fds[0], 5: fds[1]})
            for fd in fds:
                os.close(fd)
            fds.clear()
            return cand
        role = {"stdin": "program", "call": "call", "checker": "checker", "math": "math"}[mode]
        if role in ("program", "call"):
            _precompile(spec["code"], "<solution>")
        return self._spawn(spec, role, jobdir, secret_len, {})

    def _spawn(
        self,
        spec: dict[str, Any],
        role: str,
        jobdir: str,
        secret_len: int,
        extra: dict[int, int],
    ) -> Proc:
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        rep_r, rep_w = os.pipe()
        data = spec.get("stdin") if role in ("program", "call") else None
        stdin_fd = self.devnull if data is None else _stdin_fd(data)
        pid = fork()
        if pid == 0:
            try:
                # Copied only here, in the trusted child: the zygote never holds it outside the buffer.
                secret = bytes(self.secret[:secret_len])
                fds = {0: stdin_fd, 1: out_w, 2: err_w, 3: rep_w, **extra}
                prepare_child(fds, jobdir, spec["limits"], self.cfg, self._seccomp_on())
                runners.child_main(spec, role, secret)
            except BaseException as exc:
                os.write(2, f"sandbox setup failed: {exc!r}\n".encode())
            finally:
                os._exit(70)
        for fd in (out_w, err_w, rep_w):
            os.close(fd)
        if stdin_fd != self.devnull:
            os.close(stdin_fd)
        return Proc(pid, role, out_r, err_r, rep_r)

    def _clean(self, jobdir: str) -> None:
        def unlock(func: Any, path: str, _exc: Any) -> None:
            # A program may chmod its files to 000; the owner (or root) can undo that.
            os.chmod(os.path.dirname(path), stat.S_IRWXU)
            if os.path.isdir(path) and not os.path.islink(path):
                os.chmod(path, stat.S_IRWXU)
            func(path)

        try:
            os.rmdir(jobdir)  # the usual case: the program wrote nothing
        except OSError:
            shutil.rmtree(jobdir, onerror=unlock)
        for root in self.cfg.get("sweep_roots", []):
            for entry in os.scandir(root):
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path, onerror=unlock)
                else:
                    os.unlink(entry.path)


def fork() -> int:
    """fork(2) without CPython's fork hooks; only ever called from the zygote's single thread.

    `os.fork` runs the interpreter's after-fork work in the child: re-initialising the runtime's
    locks and, through `os.register_at_fork`, `threading`'s and `random`'s hooks (the preloaded
    modules import both). With one thread there is nothing to re-initialise (no lock can be
    held by a thread that is gone), and that work is paid by every child before the program
    runs: a child of a zygote-like process that exits at once took 255 page faults and 1.04 ms
    of CPU after `os.fork`, 53 and 0.59 ms after this (a program touches many of those pages
    anyway: ~5% fewer faults for a HumanEval candidate). What the child misses: `random` is not
    reseeded, so every program starts from the state the zygote seeded once (`main`: the same
    seed for every program and zygote, so a randomized program gets the same verdict each time
    it is graded, as the verdict cache assumes). Threads a program starts work as usual.
    """
    pid = _fork_with_gil()
    if pid < 0:
        raise OSError(ctypes.get_errno(), "fork failed")
    return int(pid)


def _precompile(code: str, filename: str) -> None:
    """Compile untrusted code here, once, for the children that run it (they inherit the object).

    Compiling runs none of the code. Only the program's own source, never a secret, so nothing
    here is worth hiding from later programs; a compile error is left for the child to raise and
    report. Bounded: the parent caps code at 256 KiB and the compiler guards its recursion.
    """
    key = filename + code
    if key in runners.PRECOMPILED:
        return
    runners.PRECOMPILED.clear()
    try:
        runners.PRECOMPILED[key] = runners.compile_source(code, filename)
    except (SyntaxError, ValueError) as exc:
        # Kept for the child to raise: a fifth of sampled programs do not compile, and compiling
        # again in a fresh child cost ~0.7 ms of page faults each.
        runners.PRECOMPILED[key] = exc
    except (RecursionError, MemoryError, OverflowError):
        pass  # the child compiles again under its own limits and reports what it hits


def _stdin_fd(data: str) -> int:
    fd = os.memfd_create("stdin", os.MFD_CLOEXEC)
    os.write(fd, data.encode("utf-8", "surrogateescape"))
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def prepare_child(
    fds: dict[int, int], jobdir: str, limits: dict[str, Any], cfg: dict[str, Any], use_seccomp: bool
) -> None:
    """Runs in the fresh child: session, fds, directory, uid, rlimits, seccomp (in this order)."""
    os.setsid()
    if not cfg.get("pid1"):
        # As pid 1 the kernel kills the namespace with the zygote; otherwise die with it ourselves.
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    high = {target: fcntl.fcntl(src, fcntl.F_DUPFD, 64) for target, src in fds.items()}
    for target, fd in high.items():
        os.dup2(fd, target)
    os.closerange(max(fds) + 1, resource.getrlimit(resource.RLIMIT_NOFILE)[0])
    os.chdir(jobdir)
    os.umask(0o077)
    uid = cfg.get("drop_uid")
    if uid is not None:
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
    # A second over the limit: the wall-clock kill decides single-threaded loops (one rule, not a
    # race between two), RLIMIT_CPU backs it up and catches threads burning several cores.
    cpu = max(1, int(float(limits["cpu_s"]) + 0.999)) + 1
    mem = int(limits["memory_mb"]) * 1024 * 1024
    for res, value in (
        (resource.RLIMIT_CPU, (cpu, cpu + 1)),
        (resource.RLIMIT_AS, (mem, mem)),
        (resource.RLIMIT_STACK, (min(mem // 4, 256 << 20), min(mem // 4, 256 << 20))),
        (resource.RLIMIT_FSIZE, (int(limits["file_bytes"]),) * 2),
        (resource.RLIMIT_NOFILE, (int(limits["max_files"]),) * 2),
        (resource.RLIMIT_NPROC, (int(limits["max_processes"]) + int(cfg.get("nproc_base", 0)),) * 2),
    ):
        resource.setrlimit(res, value)
    if use_seccomp and cfg.get("kill_filter"):
        seccomp.install(os.getpid())  # stacked on the zygote's inherited filter


class Proc:
    """One forked child as the zygote sees it: its pipes, what it wrote, how it ended."""

    def __init__(self, pid: int, role: str, out: int, err: int, rep: int) -> None:
        self.pid, self.role = pid, role
        self.pidfd = os.pidfd_open(pid)
        self.fds = {out: "stdout", err: "stderr", rep: "report"}
        self.data: dict[str, bytearray] = {
            "stdout": bytearray(),
            "stderr": bytearray(),
            "report": bytearray(),
        }
        self.seen = {"stdout": 0, "stderr": 0, "report": 0}
        self.status: int | None = None
        self.rusage: Any = None

    def reap(self, block: bool) -> bool:
        if self.status is not None:
            return True
        try:
            pid, status, usage = os.wait4(self.pid, 0 if block else os.WNOHANG)
        except ChildProcessError:
            self.status = -1
            return True
        if pid == 0:
            return False
        self.status, self.rusage = status, usage
        return True

    def result(self) -> dict[str, Any]:
        st = self.status if self.status is not None and self.status >= 0 else None
        return {
            "exit_code": os.WEXITSTATUS(st) if st is not None and os.WIFEXITED(st) else None,
            "signal": os.WTERMSIG(st) if st is not None and os.WIFSIGNALED(st) else None,
            "cpu_s": (self.rusage.ru_utime + self.rusage.ru_stime) if self.rusage else None,
            "maxrss_kb": self.rusage.ru_maxrss if self.rusage else None,
            "stdout": self.data["stdout"].decode("utf-8", "replace"),
            "stdout_bytes": self.seen["stdout"],
            "stderr": self.data["stderr"][-STDERR_KEEP:].decode("utf-8", "replace"),
            "report": _report_text(bytes(self.data["report"])),
        }


def _report_text(raw: bytes) -> str:
    """The report frame's body; more or less than exactly one frame is reported as malformed."""
    size = int.from_bytes(raw[:4], "big") if len(raw) >= 4 else -1
    return raw[4:].decode("utf-8", "replace") if size == len(raw) - 4 else ("!" if raw else "")


def supervise(
    proc: Proc, deadline: float, limits: dict[str, Any], spread: tuple[float, list[int]] | None = None
) -> tuple[bool, bool]:
    """Read the program's pipes while it runs; stop at its exit, the output cap or the deadline.

    `spread` (a time and CPUs): a program still running then may move to any of those CPUs. A
    pinned worker keeps short programs next to their tester, but a long one must not share its
    core with the worker's next jobs while another core idles (the tail of a batch)."""
    cap = {"stdout": int(limits["output_bytes"]), "stderr": int(limits["output_bytes"]), "report": 1 << 26}
    poller = select.poll()
    poller.register(proc.pidfd, select.POLLIN)
    open_fds = dict(proc.fds)
    for fd in open_fds:
        poller.register(fd, select.POLLIN)
    while True:
        now = time.monotonic()
        left = deadline - now
        if left <= 0:
            return True, False
        if spread is not None:
            if now >= spread[0]:
                with contextlib.suppress(OSError):  # it may have exited (or be a zombie) already
                    os.sched_setaffinity(proc.pid, spread[1])
                spread = None
            else:
                left = min(left, spread[0] - now)
        for fd, _ev in poller.poll(max(1, int(left * 1000))):
            name = open_fds.get(fd)
            if name is None:
                poller.unregister(fd)  # the pidfd: it exited
                continue
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                poller.unregister(fd)
                del open_fds[fd]
                continue
            proc.seen[name] += len(chunk)
            if proc.seen[name] > cap[name]:
                return False, True
            if name != "stderr" or len(proc.data[name]) < 4 * STDERR_KEEP:
                proc.data[name] += chunk
        if proc.reap(block=False):
            _drain(proc, open_fds, cap)
            return False, False


def _drain(proc: Proc, open_fds: dict[int, str], cap: dict[str, int]) -> None:
    """What the exited program left in its pipes (non-blocking: a live grandchild may hold them)."""
    for fd, name in open_fds.items():
        os.set_blocking(fd, False)
        while True:
            try:
                chunk = os.read(fd, 1 << 16)
            except BlockingIOError:
                break
            if not chunk or proc.seen[name] > cap[name]:
                break
            proc.seen[name] += len(chunk)
            proc.data[name] += chunk


def sweep(pid1: bool, proc: Proc | None, budget_s: float = 5.0) -> None:
    """Kill and reap every process the job left behind, escaped sessions included."""
    deadline = time.monotonic() + budget_s
    if proc is not None:
        for target in (-proc.pid, proc.pid):  # its process group first, then itself
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(target, signal.SIGKILL)
        proc.reap(block=True)
    while time.monotonic() < deadline:
        victims = [-1] if pid1 else _children()
        for pid in victims:
            try:
                os.kill(pid, signal.SIGKILL)
                if pid > 0:
                    os.kill(-pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if not _reap_all():  # no child left: as pid 1 or subreaper, no descendant is left either
            break
        time.sleep(0.0005)
    else:
        raise RuntimeError("could not sweep the job's processes")
    if proc is not None:
        os.close(proc.pidfd)
        for fd in proc.fds:
            os.close(fd)


def _reap_all() -> bool:
    """Reap exited children; True while any child remains."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return False
        if pid == 0:
            return True


def _children() -> list[int]:
    pids: list[int] = []
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/children") as f:
                pids += [int(x) for x in f.read().split()]
        except OSError:
            pass
    return pids


def main(config: dict[str, Any]) -> None:
    """Entry point called by the bootstrap loader inside the envelope."""
    proto_in, proto_out = os.dup(0), os.dup(1)
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)  # a stray print in the zygote must not corrupt the protocol
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # as pid 1, ignore SIGINT from the sandbox
    _libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0)  # no same-uid ptrace or /proc/<pid>/mem of us
    if os.getpid() != 1:
        _libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    if config.get("cpus"):
        # The candidate, its tester and this process talk in many short round trips; a wake-up
        # on another core cost ~8x one on the same core on a 2-vCPU VM (53-61 vs 6-8 us).
        # What we inherited (the pool's usable CPUs) is where long programs go (`supervise`).
        config["spread_cpus"] = sorted(os.sched_getaffinity(0))
        os.sched_setaffinity(0, config["cpus"])
    for path in config.get("sys_path", []):
        sys.path.append(path)
    for module in config.get("preload", []):
        __import__(module)
    if config.get("warmup"):  # from the pool's config: trusted
        exec(compile(config["warmup"], "<warmup>", "exec"), {"__name__": "__warmup__"})
    for res in (resource.RLIMIT_CORE, resource.RLIMIT_MEMLOCK, resource.RLIMIT_MSGQUEUE):
        resource.setrlimit(res, (0, 0))  # the same for every job: set once, inherited
    runners.install_stdio()
    if "random" in sys.modules:  # see `fork`: no per-child reseed
        sys.modules["random"].seed(0)
    if len(os.listdir("/proc/self/task")) != 1:
        raise RuntimeError("the zygote must be single-threaded to fork without CPython's hooks")
    config["pid1"] = os.getpid() == 1
    # Children must not let the collector walk (and so copy-on-write) the preloaded heap.
    gc.collect()
    gc.freeze()
    os.makedirs(config["work_root"], mode=0o711, exist_ok=True)
    if config.get("seccomp") and seccomp.supported():
        seccomp.install(None)  # on the zygote itself: every child inherits it without a per-fork cost
    Zygote(config, proto_in, proto_out).serve()
