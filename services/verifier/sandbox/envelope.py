"""The envelope around a zygote: bubblewrap, unshare, or rlimits only; which one works; what it protects.

Modes, strongest first (`auto` takes the first that starts here and says so in `Protections`):

- `bwrap`: Debian's bubblewrap, `--unshare-all` (user, pid, net, ipc, uts, cgroup namespaces), the
  zygote as pid 1 of its pid namespace, read-only `/usr` and nothing else of the host, private
  size-capped tmpfs on `/tmp` and `/dev/shm`, cleared environment, no capabilities, no nested
  user namespaces, `--die-with-parent`. Launched as a non-root uid when the service is root.
- `unshare`: util-linux unshare with user, pid, net, ipc, uts and mount namespaces and a fresh
  `/proc`. No network, other processes invisible, but the host filesystem is readable (as the
  sandbox uid) and world-writable host directories are writable.
- `rlimits`: no namespaces (restricted Kubernetes pods that forbid unshare). Children run as a
  separate non-root uid when the service is root; seccomp denies sockets and signals to others.
  The host filesystem is readable wherever that uid may read, so run it with the chart's
  NetworkPolicy and, preferably, a gVisor runtime class.

In every mode children get rlimits (CPU, address space, stack, file size, open files, processes),
a new session, seccomp (x86_64) and a per-job directory; the zygote keeps the process tree in
check (see `zygote`). HumanEval's tester runs in an envelope of its own, of the same mode, as
another uid when the service is root (see `tester`). Each envelope gets one end of a Unix socket
pair besides its protocol pipes: the pool passes a job's pipe ends over it. The interpreter inside is the system Python (`/usr/bin/python3`) when it has
the service's major.minor version, else the service's own; it runs with `-I -S -B`.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

from services.verifier.sandbox import seccomp

MODES = ("auto", "bwrap", "unshare", "rlimits")
_SANDBOX_MODULES = {
    "zygote": ("codec", "seccomp", "runners", "zygote"),
    "tester": ("codec", "seccomp", "tester"),
}
TESTER_UID_OFFSET = 1 << 16
"""A worker's tester runs as its worker's uid plus this, when the service is root."""
_PACKAGE = "services.verifier.sandbox"
# Reads the module sources from stdin, registers them under their package names, starts the zygote.
_LOADER = """
import os, sys, json, types
def r(n):
    b = b""
    while len(b) < n:
        c = os.read(0, n - len(b))
        if not c:
            raise SystemExit(3)
        b += c
    return b
boot = json.loads(r(int.from_bytes(r(4), "big")))
for name, src in boot["modules"]:
    parts = name.split(".")
    for i in range(1, len(parts)):
        p = ".".join(parts[:i])
        if p not in sys.modules:
            m = types.ModuleType(p); m.__path__ = []; sys.modules[p] = m
    m = types.ModuleType(name); m.__file__ = "<sandbox:" + name + ">"; sys.modules[name] = m
    exec(compile(src, name, "exec"), m.__dict__)
sys.modules[boot["main"]].main(boot["config"])
"""


# The `mode` setting: a Mode, or `auto` (the strongest that starts here).
ModeSetting = Literal["auto", "bwrap", "unshare", "rlimits"]


class Mode(StrEnum):
    BWRAP = "bwrap"
    UNSHARE = "unshare"
    RLIMITS = "rlimits"


class EnvelopeError(RuntimeError):
    """The requested isolation cannot be set up on this machine."""


@dataclass(frozen=True)
class EnvelopeSpec:
    """How to start one zygote."""

    mode: Mode
    uid: int
    """The uid untrusted code runs as when the service is root (one per worker)."""
    tmp_mb: int = 64
    python: str = ""
    ro_binds: tuple[str, ...] = ()
    sys_path: tuple[str, ...] = ()
    preload: tuple[str, ...] = ()
    warmup: str = ""
    seccomp: bool = True
    main: str = "zygote"
    """What runs inside: `zygote` (forks the programs) or `tester` (HumanEval tests)."""
    cpus: tuple[int, ...] = ()
    """CPUs the envelope's processes are pinned to (empty: wherever the scheduler puts them)."""


@dataclass(frozen=True)
class Protections:
    """What isolation is active, in words, for health, logs and GetStats."""

    mode: str
    network: str
    filesystem: str
    processes: str
    identity: str
    seccomp: str
    rlimits: str = "CPU, address space, stack, file size, open files, processes, no core dumps"
    tests: str = (
        "HumanEval tests run in a separate envelope of the same mode that no model code runs in; "
        "candidates reach them only through a pipe of plain values"
    )
    not_covered: tuple[str, ...] = field(
        default=(
            "kernel exploits (use gVisor in production)",
            "CPU side channels and timing between co-located programs",
            "code and test inputs of earlier programs in the same worker (not secret)",
        )
    )

    def as_dict(self) -> dict[str, object]:
        return asdict(self)

    def summary(self) -> str:
        return f"{self.mode}: network {self.network}; filesystem {self.filesystem}; seccomp {self.seccomp}"


def running_as_root() -> bool:
    return os.geteuid() == 0


def sandbox_python() -> str:
    """The system Python when it matches our version (no venv, no /root paths), else ours."""
    system = "/usr/bin/python3"
    if os.access(system, os.X_OK):
        probe = subprocess.run(
            [system, "-I", "-S", "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
        if probe.stdout.strip() == f"{sys.version_info[0]}.{sys.version_info[1]}":
            return system
    return os.path.realpath(sys.executable)


def available(mode: Mode) -> bool:
    if mode is Mode.BWRAP:
        return shutil.which("bwrap") is not None
    if mode is Mode.UNSHARE:
        return shutil.which("unshare") is not None
    return True


def _host_root_links() -> list[str]:
    """/lib, /lib64, /bin, /sbin as the host has them (symlinks on merged-/usr systems)."""
    args: list[str] = []
    for name in ("lib", "lib64", "bin", "sbin", "lib32"):
        path = Path("/") / name
        if path.is_symlink():
            args += ["--symlink", os.readlink(path), str(path)]
        elif path.is_dir():
            args += ["--ro-bind", str(path), str(path)]
    return args


def _bwrap_argv(spec: EnvelopeSpec, python: str) -> list[str]:
    size = str(spec.tmp_mb * 1024 * 1024)
    argv = ["bwrap", "--unshare-all", "--unshare-user", "--die-with-parent", "--new-session", "--as-pid-1"]
    argv += ["--disable-userns", "--cap-drop", "ALL", "--hostname", "sandbox"]
    argv += ["--ro-bind", "/usr", "/usr", *_host_root_links(), "--proc", "/proc", "--dev", "/dev"]
    argv += ["--size", size, "--tmpfs", "/tmp", "--size", size, "--tmpfs", "/dev/shm"]
    for path in _interpreter_dirs(python):
        argv += ["--ro-bind", path, path]
    for path in spec.ro_binds:
        argv += ["--ro-bind", path, _bound_path(spec, path)]
    # The root and /dev are bwrap's own tmpfs: read-only, so writes land only in the capped tmpfs.
    argv += ["--remount-ro", "/dev", "--remount-ro", "/"]
    argv += ["--clearenv", "--setenv", "PATH", "/usr/bin:/bin", "--setenv", "LANG", "C.UTF-8"]
    argv += ["--setenv", "HOME", "/tmp", "--chdir", "/tmp"]
    return argv


def _bound_path(spec: EnvelopeSpec, path: str) -> str:
    """Where an extra read-only path appears inside the envelope.

    bwrap mode mounts them under /opt/restem-ro/<n>, never at their host path: a host path under
    /tmp (a checkout in a temp dir) would sit inside the sandbox's private /tmp, which the zygote
    sweeps after every job. Other modes see the host filesystem, so paths stay as they are.
    """
    if spec.mode is not Mode.BWRAP or path not in spec.ro_binds:
        return path
    return f"/opt/restem-ro/{spec.ro_binds.index(path)}"


def _interpreter_dirs(python: str) -> list[str]:
    """Host directories the interpreter needs that /usr does not already cover."""
    if python.startswith("/usr/"):
        return []
    prefix = os.path.dirname(os.path.dirname(os.path.realpath(python)))
    return [prefix] if not prefix.startswith("/usr") else []


def _count_threads(uid: int) -> int:
    """Tasks the kernel counts against RLIMIT_NPROC for `uid` outside any user namespace."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = dict(
                line.split(":", 1) for line in Path(f"/proc/{entry}/status").read_text().splitlines()
            )
            if int(fields["Uid"].split()[0]) == uid:
                total += int(fields["Threads"])
        except (OSError, KeyError, ValueError):
            continue
    return total


def _config(spec: EnvelopeSpec, work_root: str, channel_fd: int) -> dict[str, object]:
    root = running_as_root()
    drop = spec.uid if (spec.mode is Mode.RLIMITS and root) else None
    own_uid = os.getuid() if not root else spec.uid
    # Without a user namespace RLIMIT_NPROC counts every task of the uid on the host.
    base = _count_threads(own_uid) if spec.mode is Mode.RLIMITS else 0
    sweep = ["/tmp", "/dev/shm"] if spec.mode is Mode.BWRAP else [work_root]
    return {
        "work_root": "/tmp" if spec.mode is Mode.BWRAP else work_root,
        "sweep_roots": sweep,
        "drop_uid": drop,
        # Without a pid namespace and with the service's own uid, children could signal the
        # service and other workers: only then do they need seccomp's signal rules.
        "kill_filter": spec.mode is Mode.RLIMITS and not root and spec.main == "zygote",
        "nproc_base": base,
        "seccomp": spec.seccomp,
        "sys_path": [_bound_path(spec, p) for p in spec.sys_path],
        "preload": list(spec.preload),
        "warmup": spec.warmup,
        "fd_channel": channel_fd,
        "cpus": list(spec.cpus),
    }


def bootstrap_payload(spec: EnvelopeSpec, work_root: str, channel_fd: int) -> bytes:
    here = Path(__file__).parent
    modules = [[f"{_PACKAGE}.{m}", (here / f"{m}.py").read_text()] for m in _SANDBOX_MODULES[spec.main]]
    config = _config(spec, work_root, channel_fd)
    body = json.dumps({"modules": modules, "main": f"{_PACKAGE}.{spec.main}", "config": config}).encode()
    return len(body).to_bytes(4, "big") + body


def make_work_root(spec: EnvelopeSpec) -> str:
    """A private host directory for jobs in the modes without a private /tmp."""
    path = tempfile.mkdtemp(prefix="restem-sandbox-")
    if running_as_root():
        # rlimits: the root zygote creates per-job dirs owned by the uid; unshare runs as the uid.
        os.chown(path, spec.uid if spec.mode is Mode.UNSHARE else 0, spec.uid)
        os.chmod(path, 0o711 if spec.mode is Mode.RLIMITS else 0o700)
    return path


def launch(spec: EnvelopeSpec, work_root: str, channel_fd: int) -> subprocess.Popen[bytes]:
    """Start one envelope (its fd `channel_fd` stays open inside); the caller sends the payload
    and waits for `ready`."""
    python = spec.python or sandbox_python()
    interp = [python, "-I", "-S", "-B", "-c", _LOADER]
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": work_root}
    as_uid: dict[str, Any] = {}
    if spec.mode is Mode.BWRAP:
        argv = _bwrap_argv(spec, python) + interp
    elif spec.mode is Mode.UNSHARE:
        argv = ["unshare", "--user", "--map-current-user", "--net", "--ipc", "--uts", "--pid"]
        argv += ["--fork", "--mount", "--mount-proc", "--kill-child", "--", *interp]
    else:
        argv = interp
        if not running_as_root():
            # Same uid as the service: hide our /proc/<pid>/environ and memory from the children.
            ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE
    if spec.mode is not Mode.RLIMITS and running_as_root():
        if shutil.which("setpriv"):
            # setpriv changes the uid rather than Popen(user=...): Popen then starts the child with
            # vfork, which runs no pthread_atfork handlers there. gRPC's crash (SIGSEGV) a child
            # forked while its threads are busy, and envelopes start while RPCs are served.
            argv = ["setpriv", f"--reuid={spec.uid}", f"--regid={spec.uid}", "--clear-groups", "--", *argv]
        else:
            as_uid = {"user": spec.uid, "group": spec.uid, "extra_groups": []}
    return subprocess.Popen(
        argv,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd=work_root,
        start_new_session=True,
        pass_fds=(channel_fd,),
        **as_uid,
    )


def protections(spec: EnvelopeSpec, ready: dict[str, object]) -> Protections:
    """Describe what is active, from the spec and what the zygote reported once started."""
    sc = "on (x86_64 deny-list)" if ready.get("seccomp") else f"off ({seccomp_reason(spec)})"
    uid = ready.get("uid")
    ident = f"non-root uid {spec.uid}" if running_as_root() else f"the service's uid {os.getuid()}"
    if spec.mode is Mode.BWRAP:
        return Protections(
            "bwrap",
            "none (empty network namespace)",
            f"read-only /usr only; private {spec.tmp_mb} MiB /tmp and /dev/shm; service files not mounted",
            "own pid namespace, zygote is pid 1; NPROC counted per user namespace",
            f"{ident} (uid {uid} inside); environment cleared",
            sc,
        )
    if spec.mode is Mode.UNSHARE:
        return Protections(
            "unshare",
            "none (empty network namespace)",
            "host filesystem readable as the sandbox uid; per-job directory",
            "own pid namespace, zygote is pid 1",
            f"{ident}; environment cleared",
            sc,
        )
    return Protections(
        "rlimits",
        "seccomp denies socket()" if ready.get("seccomp") else "NOT ISOLATED (no namespace, no seccomp)",
        "host filesystem readable as the sandbox uid; per-job directory",
        "no pid namespace; subreaper sweep; seccomp limits signals to the child itself",
        f"{ident}; environment cleared; service made non-dumpable",
        sc,
    )


def seccomp_reason(spec: EnvelopeSpec) -> str:
    if not spec.seccomp:
        return "disabled by config"
    return "only x86_64 is supported" if not seccomp.supported() else "not available"
