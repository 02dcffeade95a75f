"""Run untrusted Python (model completions) in a throw-away, locked-down process.

Every run gets:

- a fresh working directory, owned by a per-run unprivileged uid (root ignores ``RLIMIT_NPROC``
  and may write anywhere, so the child drops to that uid/gid with no supplementary groups);
- its own session / process group, and a new network namespace (no interface but a down loopback)
  and mount namespace in which ``/tmp``, ``/var/tmp`` and ``/dev/shm`` are small private tmpfs,
  when the parent is root; otherwise the harness refuses ``import socket`` (weaker, best effort,
  and programs importing modules that need sockets, e.g. ``asyncio``, fail);
- resource limits set before the program starts: CPU seconds, address space, processes (per uid),
  file size (so flooding stdout ends with SIGXFSZ), open files, no core dumps; and, where the
  cgroup-v1 memory / pids hierarchies are writable, a per-run cgroup bounding the memory and the
  number of processes of the whole run (a fork + allocate loop cannot multiply the address-space
  limit by the process limit);
- a scrubbed environment (nothing from the trainer's environment reaches the program);
- a wall-clock timeout, after which the process group and every process left with the run's uid
  are killed (also after a normal exit, so no daemonised child survives).

The program is executed by a small trusted harness (``_HARNESS``) inside the sandbox. Test verdicts
come back through a result file carrying a per-run random nonce that the program is not given, so an
early ``os._exit(0)``, a ``sys.exit(0)`` or a forged "passed" line on stdout cannot count as passing.
Limit of the design: tests that run in the program's own process (HumanEval ``check``, asserts) can
be subverted by a program that deliberately introspects the harness (as with HumanEval's own
harness); stdin/stdout tests are compared by the parent and cannot.
"""

from __future__ import annotations

import ctypes
import glob
import itertools
import json
import logging
import os
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)

_CLONE_NEWNS = 0x00020000
_CLONE_NEWNET = 0x40000000
_MS_NOSUID, _MS_NODEV, _MS_REC, _MS_PRIVATE = 0x2, 0x4, 0x4000, 0x40000
_PRIVATE_TMP_DIRS = (b"/tmp", b"/var/tmp", b"/dev/shm")
# Per-run uids come from this range (no passwd entry needed): 64 per parent pid, so concurrent runs
# never share one and the uids of a dead parent's runs are known (see kill_runs_of).
_UID_BASE, _UID_SPAN, _UIDS_PER_PID = 1_000_000, 1 << 28, 64
_uid_counter = itertools.count()
_uid_lock = threading.Lock()

_CONFIG_NAME = ".mr1_config.json"
_NO_NETNS_MARKER = ".mr1_no_netns"
_KILL = shutil.which("kill", path="/bin:/usr/bin") or "/bin/kill"

# Trusted code run first inside the sandbox (as ``python -I -S -c _HARNESS``). Reads its config,
# deletes it (the nonce must not be visible to the program), then runs the program and tests.
_HARNESS = r"""
import json, os, sys
if os.path.exists(".mr1_no_netns"):  # no network namespace: refuse sockets (best effort only)
    sys.modules["_socket"] = None
    os.unlink(".mr1_no_netns")
def _main():
    with open(".mr1_config.json") as f:
        cfg = json.load(f)
    os.unlink(".mr1_config.json")
    nonce, result_fd, mode = cfg.pop("nonce"), cfg.pop("result_fd"), cfg["mode"]
    with open("main.py") as f:
        source = f.read()
    scope = {"__name__": "__main__" if mode == "script" else "solution", "__builtins__": __builtins__}
    passed = total = 0
    if mode == "script":
        exec(compile(source, "main.py", "exec"), scope)
    elif mode == "check":
        total = 1
        exec(compile(source, "main.py", "exec"), scope)
        exec(compile(cfg["test"], "test.py", "exec"), scope)
        scope["check"](scope[cfg["entry_point"]])
        passed = 1
    elif mode == "asserts":
        exec(compile(source, "main.py", "exec"), scope)
        for test in cfg["tests"]:
            total += 1
            try:
                exec(compile(test, "test.py", "exec"), scope)
                passed += 1
            except BaseException:
                pass
    sys.stdout.flush()
    os.write(result_fd, ("%s %d %d\n" % (nonce, passed, total)).encode())
_main()
"""


@dataclass(frozen=True)
class SandboxLimits:
    """Limits of one sandboxed run."""

    wall_s: float = 10.0
    """Wall-clock seconds before everything is killed."""
    cpu_s: int = 10
    """RLIMIT_CPU: CPU seconds of the process (all its threads)."""
    memory_bytes: int = 1 << 30
    """RLIMIT_AS: address space of each process."""
    max_processes: int = 32
    """RLIMIT_NPROC: processes + threads of the run's uid."""
    max_file_bytes: int = 16 << 20
    """RLIMIT_FSIZE: largest file the program may write (stdout included)."""
    max_open_files: int = 64
    """RLIMIT_NOFILE."""
    max_output_chars: int = 1 << 20
    """Characters of stdout / stderr read back."""


@dataclass
class SandboxResult:
    """What one sandboxed run did."""

    returncode: int | None
    stdout: str
    stderr: str
    timed_out: bool
    duration_s: float
    passed: int = 0
    """Tests passed, as reported by the harness (0 unless the report carries the run's nonce)."""
    total: int = 0
    completed: bool = False
    """True when the harness reached its end (the program did not exit or die early)."""
    extra: dict = field(default_factory=dict)


def _world_executable(path: str) -> bool:
    """True when an unprivileged user can execute ``path`` (every directory on the way searchable)."""
    path = os.path.realpath(path)
    if not os.path.isfile(path) or not os.stat(path).st_mode & 0o001:
        return False
    parent = os.path.dirname(path)
    while parent and parent != "/":
        if not os.stat(parent).st_mode & 0o001:
            return False
        parent = os.path.dirname(parent)
    return True


def default_interpreter() -> str:
    """A Python the sandbox uid can run: this one if reachable, else the system ``python3``."""
    if os.geteuid() != 0 or _world_executable(sys.executable):
        return sys.executable
    for candidate in ("/usr/bin/python3", "/usr/local/bin/python3", shutil.which("python3") or ""):
        if candidate and _world_executable(candidate):
            return candidate
    raise RuntimeError("no Python interpreter that an unprivileged sandbox user can execute")


def _next_uid() -> int:
    with _uid_lock:
        n = next(_uid_counter)
    return _uid_of(os.getpid(), n)


def _uid_of(pid: int, n: int) -> int:
    return _UID_BASE + (pid * _UIDS_PER_PID + n % _UIDS_PER_PID) % _UID_SPAN


_libc = ctypes.CDLL(None, use_errno=True)


def _own_cgroup_v1(controller: str) -> str | None:
    """The cgroup-v1 directory of this process for ``controller`` when mounted, else None."""
    root = f"/sys/fs/cgroup/{controller}"
    try:
        with open("/proc/self/cgroup") as f:
            for line in f:
                _, controllers, path = line.rstrip("\n").split(":", 2)
                if controller in controllers.split(","):
                    directory = root + path.rstrip("/")
                    return directory if os.path.isdir(directory) else None
    except OSError:
        pass
    return None


class _RunCgroups:
    """Per-run cgroup-v1 memory and pids groups (total memory and processes of the whole run).

    Best effort: where the hierarchy is missing or read-only, the run goes without (the rlimits
    still bound each process). Created by the parent; the child joins them in ``preexec``.
    """

    def __init__(self, name: str, limits: SandboxLimits):
        self.dirs: list[str] = []
        settings = {
            "memory": {"memory.limit_in_bytes": limits.memory_bytes},
            "pids": {"pids.max": limits.max_processes},
        }
        for controller, values in settings.items():
            parent = _own_cgroup_v1(controller)
            if parent is None:
                continue
            directory = os.path.join(parent, name)
            try:
                os.mkdir(directory)
            except OSError:
                continue
            try:
                for key, value in values.items():
                    with open(os.path.join(directory, key), "w") as f:
                        f.write(str(value))
            except OSError:
                self._remove(directory)
                continue
            self.dirs.append(directory)
        self.procs_files = [os.path.join(d, "cgroup.procs").encode() for d in self.dirs]

    @staticmethod
    def _remove(directory: str) -> bool:
        for _ in range(50):
            try:
                os.rmdir(directory)
                return True
            except FileNotFoundError:
                return True
            except OSError:
                time.sleep(0.01)  # exiting tasks leave the group asynchronously
        logger.warning("could not remove sandbox cgroup %s", directory)
        return False

    def join(self) -> None:
        """Move the calling process into the groups (in the child, before exec)."""
        pid = str(os.getpid()).encode()
        for path in self.procs_files:
            fd = os.open(path, os.O_WRONLY)
            try:
                os.write(fd, pid)
            finally:
                os.close(fd)

    def remove(self) -> None:
        for directory in self.dirs:
            self._remove(directory)


def _make_preexec(uid: int | None, limits: SandboxLimits, cgroups: _RunCgroups | None):
    """The function run in the child between fork and exec (order matters: namespaces and mounts
    need root, so they come before the privilege drop; limits are set before exec)."""
    import resource

    rlimits = [
        (resource.RLIMIT_CPU, (limits.cpu_s, limits.cpu_s + 1)),
        (resource.RLIMIT_AS, (limits.memory_bytes, limits.memory_bytes)),
        (resource.RLIMIT_FSIZE, (limits.max_file_bytes, limits.max_file_bytes)),
        (resource.RLIMIT_NOFILE, (limits.max_open_files, limits.max_open_files)),
        (resource.RLIMIT_NPROC, (limits.max_processes, limits.max_processes)),
        (resource.RLIMIT_CORE, (0, 0)),
    ]
    unshare, mount = _libc.unshare, _libc.mount

    def preexec() -> None:
        if cgroups is not None:
            cgroups.join()
        if uid is None:  # not root: no namespaces
            os.close(os.open(_NO_NETNS_MARKER, os.O_CREAT | os.O_WRONLY, 0o666))
        else:
            if unshare(_CLONE_NEWNET | _CLONE_NEWNS) == 0:
                mount(b"none", b"/", None, _MS_REC | _MS_PRIVATE, None)
                for target in _PRIVATE_TMP_DIRS:
                    mount(b"tmpfs", target, b"tmpfs", _MS_NOSUID | _MS_NODEV, b"size=16m,mode=1777")
            else:  # tell the harness (cwd is the run's directory)
                os.close(os.open(_NO_NETNS_MARKER, os.O_CREAT | os.O_WRONLY, 0o666))
        for which, value in rlimits:
            resource.setrlimit(which, value)
        if uid is not None:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)

    return preexec


def _pids_of_uid(uid: int) -> list[int]:
    """Live (non-zombie) processes owned by ``uid``."""
    pids = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            if os.stat(f"/proc/{name}").st_uid != uid:
                continue
            with open(f"/proc/{name}/stat", "rb") as f:
                state = f.read().rsplit(b")", 1)[1].split()[0]
        except OSError:
            continue
        if state not in (b"Z", b"X"):
            pids.append(int(name))
    return pids


def _sweep_uid(uid: int) -> bool:
    """Kill every process of ``uid`` (never 0); True when none is left."""
    if uid == 0:  # kill(-1) as root would hit everything
        return False
    for _ in range(20):
        if not _pids_of_uid(uid):
            return True
        # kill(-1) from a process with the run's uid signals exactly the run's processes, atomically
        # with respect to forks; signalling pid by pid is the fallback where there is no kill(1).
        try:
            subprocess.run(
                [_KILL, "-KILL", "-1"],
                user=uid,
                group=uid,
                extra_groups=[],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                check=False,
            )
        except OSError:
            for pid in _pids_of_uid(uid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
        time.sleep(0.01)
    logger.warning("sandbox uid %d still has processes after the sweep", uid)
    return False


def kill_runs_of(pid: int) -> None:
    """Kill what is left of the sandbox runs started by process ``pid`` (e.g. a scorer worker that
    was killed mid-run and so could not clean up after itself)."""
    if os.geteuid() != 0:
        return
    uids = {_uid_of(pid, n) for n in range(_UIDS_PER_PID)}
    for name in os.listdir("/proc"):
        try:
            uid = os.stat(f"/proc/{name}").st_uid if name.isdigit() else None
        except OSError:
            continue
        if uid in uids:
            _sweep_uid(uid)
    for path in glob.glob(os.path.join(tempfile.gettempdir(), f"mr1-sandbox-{pid}-*")):
        shutil.rmtree(path, ignore_errors=True)
    for controller in ("memory", "pids"):
        parent = _own_cgroup_v1(controller)
        for uid in uids if parent else ():
            for directory in glob.glob(os.path.join(parent, f"mr1-sandbox-{uid}-*")):
                _RunCgroups._remove(directory)


def _kill_everything(proc: subprocess.Popen, uid: int | None) -> None:
    """Kill the run's process group, then every process left with its uid (escaped sessions)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        logger.warning("sandbox process %d did not die after SIGKILL", proc.pid)
    if uid is not None:
        _sweep_uid(uid)


def _wait(proc: subprocess.Popen, timeout_s: float) -> bool:
    """Wait for ``proc`` to exit, at most ``timeout_s``; True when it did.

    A pidfd wakes up the moment the child exits (``Popen.wait(timeout)`` polls with sleeps of up to
    50 ms, a large share of a short run).
    """
    try:
        pidfd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):
        try:
            proc.wait(timeout=timeout_s)
            return True
        except subprocess.TimeoutExpired:
            return False
    try:
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return proc.poll() is not None
            if poller.poll(left * 1000):
                proc.wait()
                return True
    finally:
        os.close(pidfd)


def _read(path: str, limit: int) -> str:
    with open(path, "rb") as f:
        return f.read(limit).decode("utf-8", errors="replace")


def run_python(
    source: str,
    *,
    mode: str = "script",
    stdin: str = "",
    test: str = "",
    entry_point: str = "",
    tests: list[str] | None = None,
    limits: SandboxLimits | None = None,
    interpreter: str | None = None,
) -> SandboxResult:
    """Run ``source`` in a sandbox.

    ``mode``: ``"script"`` runs it as ``__main__`` with ``stdin`` as standard input;
    ``"check"`` runs it, then ``test`` (HumanEval style), then ``check(<entry_point>)``;
    ``"asserts"`` runs it, then each statement of ``tests`` (MBPP style), counting the ones that
    do not raise. ``passed`` / ``total`` in the result count the tests.
    """
    limits = limits or SandboxLimits()
    isolate = os.geteuid() == 0
    uid = _next_uid() if isolate else None
    nonce = secrets.token_hex(16)
    # 0o700, root's: stdio and result files; the pid in the name lets kill_runs_of clean up.
    base = tempfile.mkdtemp(prefix=f"mr1-sandbox-{os.getpid()}-")
    work = os.path.join(base, "work")
    os.mkdir(work, 0o700)
    start = time.monotonic()
    cgroups = _RunCgroups(f"mr1-sandbox-{uid}-{nonce[:8]}", limits) if isolate else None
    try:
        with open(os.path.join(work, "main.py"), "w", encoding="utf-8") as f:
            f.write(source)
        paths = {name: os.path.join(base, name) for name in ("stdin", "stdout", "stderr", "result")}
        with open(paths["stdin"], "w", encoding="utf-8") as f:
            f.write(stdin)
        files = {
            "stdin": open(paths["stdin"], "rb"),
            "stdout": open(paths["stdout"], "wb"),
            "stderr": open(paths["stderr"], "wb"),
            "result": open(paths["result"], "wb"),
        }
        try:
            result_fd = files["result"].fileno()
            config = {"nonce": nonce, "result_fd": result_fd, "mode": mode, "test": test}
            config.update(entry_point=entry_point, tests=list(tests or []))
            with open(os.path.join(work, _CONFIG_NAME), "w") as f:
                json.dump(config, f)
            if uid is not None:
                for dirpath, _, filenames in os.walk(work):
                    os.chown(dirpath, uid, uid)
                    for name in filenames:
                        os.chown(os.path.join(dirpath, name), uid, uid)
            env = {
                "PATH": "/usr/bin:/bin",
                "LANG": "C.UTF-8",
                "HOME": "/nonexistent",
                "PYTHONIOENCODING": "utf-8",
                "PYTHONDONTWRITEBYTECODE": "1",
                "OMP_NUM_THREADS": "1",
            }
            proc = subprocess.Popen(
                [interpreter or default_interpreter(), "-I", "-S", "-c", _HARNESS],
                stdin=files["stdin"],
                stdout=files["stdout"],
                stderr=files["stderr"],
                pass_fds=(result_fd,),
                cwd=work,
                env=env,
                start_new_session=True,
                preexec_fn=_make_preexec(uid, limits, cgroups),  # noqa: PLW1509 (the sandbox needs it)
            )
        finally:
            for f in files.values():
                f.close()
        timed_out = not _wait(proc, limits.wall_s)
        _kill_everything(proc, uid)
        duration = time.monotonic() - start
        report = _read(paths["result"], 200).split()
        completed = len(report) == 3 and report[0] == nonce
        passed, total = (int(report[1]), int(report[2])) if completed else (0, 0)
        return SandboxResult(
            returncode=None if timed_out else proc.returncode,
            stdout=_read(paths["stdout"], limits.max_output_chars),
            stderr=_read(paths["stderr"], limits.max_output_chars),
            timed_out=timed_out,
            duration_s=duration,
            passed=passed,
            total=total,
            completed=completed and not timed_out,
        )
    finally:
        shutil.rmtree(base, ignore_errors=True)
        if cgroups is not None:
            cgroups.remove()
