"""A seccomp-BPF deny-list installed in every untrusted child (x86_64 only), built with ctypes.

Runs inside the sandbox interpreter (standard library only: libseccomp's Python bindings are not
importable from the sandbox's interpreter, and a filter this small does not need them).

What it blocks, returning EPERM so the program sees an ordinary OSError:
- `socket` (every family): no network, no host UNIX sockets, even where no network namespace exists;
- `ptrace`, `process_vm_readv/writev`, `kcmp`, `pidfd_send_signal`, `pidfd_getfd`: no reading or
  steering other processes;
- with `own_pid` (the mode without a pid namespace, where the sandbox shares a uid with the
  service): `kill`/`tkill`/`tgkill`/`rt_sigqueueinfo`/`rt_tgsigqueueinfo` unless aimed at the child
  itself or its own process group, and `fcntl` F_SETOWN/F_SETOWN_EX/F_SETSIG (SIGIO to a chosen
  process). In a pid namespace this is not needed: the zygote is pid 1, which signals from inside
  cannot kill, and nothing else outside the job (the HumanEval tester included) is visible;
- namespace and mount calls (`unshare`, `setns`, `mount`, `pivot_root`, `chroot`, `clone` with
  namespace flags; `clone3` answers ENOSYS so libc falls back to `clone`, whose flags are checked);
- kernel attack surface a judge never needs: bpf, perf_event_open, userfaultfd, io_uring, keyrings,
  module loading, kexec, reboot, swap, acct, syslog, quotactl, open_by_handle_at, personality, iopl.
Any other architecture in a syscall (i386 `int 0x80`, x32) kills the process.

Not covered: other architectures (aarch64 gets no filter and says so), and anything an allowed
syscall can do (file access is bounded by the envelope and the uid, not by this filter).
"""

from __future__ import annotations

import ctypes
import errno
import platform
import struct

AUDIT_ARCH_X86_64 = 0xC000003E
_RET_ALLOW = 0x7FFF0000
_RET_KILL_PROCESS = 0x80000000
_RET_ERRNO = 0x00050000
_LD_ABS = 0x20  # BPF_LD | BPF_W | BPF_ABS
_JEQ = 0x15  # BPF_JMP | BPF_JEQ | BPF_K
_JGE = 0x35  # BPF_JMP | BPF_JGE | BPF_K
_JSET = 0x45  # BPF_JMP | BPF_JSET | BPF_K
_RET = 0x06  # BPF_RET | BPF_K
_NR, _ARCH, _ARG0_LO = 0, 4, 16  # offsets in struct seccomp_data (little-endian low word)

# x86_64 numbers of the calls denied outright.
_DENY = {
    41: "socket", 101: "ptrace", 310: "process_vm_readv", 311: "process_vm_writev", 312: "kcmp",
    424: "pidfd_send_signal", 438: "pidfd_getfd", 165: "mount", 166: "umount2",
    155: "pivot_root", 161: "chroot", 272: "unshare", 308: "setns", 321: "bpf", 298: "perf_event_open",
    323: "userfaultfd", 425: "io_uring_setup", 426: "io_uring_enter", 427: "io_uring_register",
    248: "add_key", 249: "request_key", 250: "keyctl", 175: "init_module", 313: "finit_module",
    176: "delete_module", 246: "kexec_load", 320: "kexec_file_load", 169: "reboot", 167: "swapon",
    168: "swapoff", 163: "acct", 103: "syslog", 179: "quotactl", 304: "open_by_handle_at",
    303: "name_to_handle_at", 135: "personality", 172: "iopl", 173: "ioperm", 212: "lookup_dcookie",
    428: "open_tree", 429: "move_mount", 430: "fsopen", 431: "fsconfig", 432: "fsmount", 433: "fspick",
    442: "mount_setattr",
}  # fmt: skip
_CLONE, _CLONE3 = 56, 435
_KILL_CALLS = (62, 200, 234, 129, 297)  # kill, tkill, tgkill, rt_(tg)sigqueueinfo: arg 0 is the target
_FCNTL = 72
_FCNTL_OWNER_CMDS = (8, 10, 15)  # F_SETOWN, F_SETSIG, F_SETOWN_EX: SIGIO/SIGURG to a chosen process
_ARG1_LO = 24
_NS_FLAGS = 0x7E020000  # CLONE_NEWNS|NEWCGROUP|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET


def _ins(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
    return struct.pack("<HBBI", code, jt, jf, k & 0xFFFFFFFF)


def build_filter(own_pid: int | None) -> bytes:
    """The BPF program; with `own_pid`, signals are limited to that process (see above).

    The zygote installs the filter without `own_pid` on itself once, so every child inherits it
    at no cost per fork; a child adds the signal rules on top only where they are needed.
    """
    deny = _RET_ERRNO | errno.EPERM
    prog = [
        _ins(_LD_ABS, _ARCH),
        _ins(_JEQ, AUDIT_ARCH_X86_64, 1, 0),
        _ins(_RET, _RET_KILL_PROCESS),
        _ins(_LD_ABS, _NR),
        _ins(_JGE, 0x40000000, 0, 1),  # x32 ABI numbers
        _ins(_RET, deny),
        _ins(_JEQ, _CLONE3, 0, 1),
        _ins(_RET, _RET_ERRNO | errno.ENOSYS),
    ]
    for nr in _DENY:
        prog += [_ins(_JEQ, nr, 0, 1), _ins(_RET, deny)]
    # clone: deny namespace flags (reload nr afterwards is unnecessary: this branch returns).
    prog += [
        _ins(_JEQ, _CLONE, 0, 4),
        _ins(_LD_ABS, _ARG0_LO),
        _ins(_JSET, _NS_FLAGS, 0, 1),
        _ins(_RET, deny),
        _ins(_RET, _RET_ALLOW),
    ]
    # kill family: allowed only at the child itself, its process group (0) or -own_pid.
    allowed = (own_pid, 0, -own_pid) if own_pid is not None else ()
    for nr in _KILL_CALLS if own_pid is not None else ():
        prog += [_ins(_JEQ, nr, 0, 2 + 2 * len(allowed)), _ins(_LD_ABS, _ARG0_LO)]
        for target in allowed:
            prog += [_ins(_JEQ, target, 0, 1), _ins(_RET, _RET_ALLOW)]
        prog += [_ins(_RET, deny)]
    if own_pid is not None:  # fcntl: the owner commands are denied, every other one allowed
        cmds = _FCNTL_OWNER_CMDS
        prog += [_ins(_JEQ, _FCNTL, 0, 3 + len(cmds)), _ins(_LD_ABS, _ARG1_LO)]
        prog += [_ins(_JEQ, cmd, len(cmds) - i, 0) for i, cmd in enumerate(cmds)]
        prog += [_ins(_RET, _RET_ALLOW), _ins(_RET, deny)]
    prog.append(_ins(_RET, _RET_ALLOW))
    return b"".join(prog)


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_char_p)]


def supported() -> bool:
    return platform.machine() == "x86_64"


_libc = ctypes.CDLL(None, use_errno=True)  # loaded once: a per-child dlopen costs ~0.2 ms


def install(own_pid: int | None) -> None:
    """Set no_new_privs and install the filter in this process (inherited by its children)."""
    libc = _libc
    program = build_filter(own_pid)
    fprog = _SockFprog(len(program) // 8, program)
    pr_set_no_new_privs, pr_set_seccomp, seccomp_mode_filter = 38, 22, 2
    if libc.prctl(pr_set_no_new_privs, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS) failed")
    if libc.prctl(pr_set_seccomp, seccomp_mode_filter, ctypes.byref(fprog), 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_SECCOMP) failed")
