"""Sandboxed execution of untrusted model code for the verifier: a pool of warm zygotes.

Layout: `pool` (the parent side: workers, bounded queue, recycling, health, verdict cache),
`channel` (the parent's end of one envelope process: frames, fds, deadlines),
`envelope` (bubblewrap / unshare / rlimits-only, detection, what is active), `zygote` and
`runners` (the code that runs *inside* the envelope, shipped as source over a pipe at start),
`tester` (HumanEval's tests, in an envelope of their own), `seccomp` (the in-child syscall
filter), `codec` (plain values and frames across the boundary), `judge` (grading jobs that turn
what the sandbox reports into verdicts, in the parent).

What is isolated (bwrap mode, the default where the kernel allows user namespaces):
- network: none (an empty network namespace) and `socket()` denied by seccomp in every mode;
- files: only `/usr` read-only; no service code, config, credentials or home directories; writes go
  to a per-job directory on a size-capped private tmpfs, which is wiped after every program;
- environment: cleared; no service variables (S3 keys, NATS password) reach the sandbox;
- processes: own pid namespace with the zygote as pid 1 (signals from inside cannot kill it, and
  nothing of the service is visible); seccomp denies ptrace, process_vm_* and namespace calls
  (and, in the no-namespace mode under the service's uid, signals to anything but the program
  itself); every process left after a program (fork bombs, `setsid()` escapees) is killed with
  `kill(-1)` from pid 1 (or found as children of the subreaper zygote) before the next job;
- resources: per-program RLIMIT_CPU, address space, stack, file size, open files and processes
  (counted per user namespace, and as a non-root uid: the process limit does not bind root),
  the wall-clock kill of the process group, and stdout/stderr caps enforced while it runs;
- grading: in the trusted parent, on plain data; HumanEval tests run in a tester process in an
  envelope of its own (another pid namespace, and another uid when the service is root), which
  never executes model code and which the candidate can reach only through a pipe of plain values;
  their expected values never enter the zygote's envelope. A custom checker's expected output is
  wiped from the zygote before any untrusted process is forked.

The `unshare` and `rlimits` fallbacks keep the limits, seccomp and the grading design but not the
filesystem view (the host is readable as the sandbox uid), and `rlimits` has no namespaces at all:
`SandboxPool.protections` says which protections are active, and the pool logs it at start.

What is NOT covered: kernel exploits and container escapes (run the verifier under gVisor in
production), CPU side channels and timing between co-located programs, memory bandwidth and
cache contention, seccomp on architectures other than x86_64, and the code and test *inputs* of
earlier programs that ran in the same zygote (not secret; expected outputs never enter the
sandbox for stdin and call-based problems).
"""

from services.verifier.sandbox.envelope import Mode, Protections
from services.verifier.sandbox.pool import (
    Limits,
    PoolBusy,
    PoolConfig,
    PoolHealth,
    RunResult,
    SandboxError,
    SandboxPool,
    Session,
    VerdictCache,
)

__all__ = [
    "Limits",
    "Mode",
    "PoolBusy",
    "PoolConfig",
    "PoolHealth",
    "Protections",
    "RunResult",
    "SandboxError",
    "SandboxPool",
    "Session",
    "VerdictCache",
]
