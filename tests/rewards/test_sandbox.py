"""The code sandbox against hostile programs: each scores 0 (or its honest result), ends within its
time limit plus a margin, leaves no process behind, and the test process survives."""

from __future__ import annotations

import os
import socket
import time

import pytest

from megatron_r1.rewards.code import CodeRewardConfig, score_code
from megatron_r1.rewards.sandbox import _UID_BASE, _UID_SPAN, SandboxLimits, run_python

LIMITS = SandboxLimits(wall_s=3.0, cpu_s=2, memory_bytes=512 << 20, max_processes=32)
CONFIG = CodeRewardConfig(limits=LIMITS)
MARGIN_S = 10.0  # generous: the machine is shared; this checks "bounded", not speed
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="isolation by uid/namespaces needs root")


def _sandbox_processes() -> list[int]:
    """Live processes owned by a sandbox uid."""
    pids = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            uid = os.stat(f"/proc/{name}").st_uid
            with open(f"/proc/{name}/stat", "rb") as f:
                state = f.read().rsplit(b")", 1)[1].split()[0]
        except OSError:
            continue
        if _UID_BASE <= uid < _UID_BASE + _UID_SPAN and state not in (b"Z", b"X"):
            pids.append(int(name))
    return pids


def _score(program: str, expected: str = "ok") -> tuple[float, float]:
    row = {"tests": [{"input": "", "output": expected}]}
    start = time.monotonic()
    reward = score_code(f"```python\n{program}\n```", row, CONFIG)
    elapsed = time.monotonic() - start
    assert elapsed < LIMITS.wall_s + MARGIN_S
    assert _sandbox_processes() == []
    return reward, elapsed


HOSTILE = {
    "fork_bomb": "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass",
    "fork_and_escape": (
        "import os, time\n"
        "for _ in range(10):\n"
        "    if os.fork() == 0:\n"
        "        os.setsid()\n"
        "        if os.fork() == 0:\n"
        "            time.sleep(60)\n"
        "        os._exit(0)\n"
        "print('ok')"
    ),
    "memory_bomb": "chunks = []\nwhile True:\n    chunks.append(bytearray(10**7))",
    "huge_alloc": "x = bytearray(10**11)\nprint('ok')",
    "infinite_loop": "while True:\n    pass",
    "sleep_forever": "import time\ntime.sleep(3600)\nprint('ok')",
    "busy_threads": (
        "import threading\n"
        "def spin():\n    while True:\n        pass\n"
        "for _ in range(16):\n    threading.Thread(target=spin, daemon=False).start()"
    ),
    "stdout_flood": "while True:\n    print('x' * 100000)",
    "stderr_flood": "import sys\nwhile True:\n    sys.stderr.write('x' * 100000)",
    "kill_parent": "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\nprint('ok')",
    "kill_everyone": "import os, signal\nos.kill(-1, signal.SIGKILL)\nprint('ok')",
    "kill_parent_group": "import os, signal\nos.killpg(os.getpgid(os.getppid()), signal.SIGKILL)",
    "exit_early": "import os\nos._exit(0)",
    "recursion": "import sys\nsys.setrecursionlimit(10**9)\ndef f(n):\n    return f(n + 1)\nf(0)",
    "open_files": "fs = [open('f%d' % i, 'w') for i in range(100000)]\nprint('ok')",
    "fill_disk": "with open('big', 'wb') as f:\n    while True:\n        f.write(b'x' * 2**20)",
}


# Programs whose honest result is a pass once the sandbox has contained them.
HONEST_PASS = {"fork_and_escape", "kill_everyone"}


@root_only
@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_programs_are_contained(name):
    reward, _ = _score(HOSTILE[name])
    assert reward == (1.0 if name in HONEST_PASS else 0.0)


@root_only
def test_writing_outside_the_work_dir_is_contained(tmp_path):
    os.chmod(tmp_path, 0o777)  # even a world-writable directory outside must stay untouched
    targets = [tmp_path / "pwned", "/tmp/mr1_pwned", os.path.join(os.getcwd(), "mr1_pwned")]
    program = "\n".join(
        f"try:\n    open({str(t)!r}, 'w').write('x')\nexcept OSError:\n    pass" for t in targets
    )
    reward, _ = _score(program + "\nprint('ok')")
    assert reward == 1.0  # its honest result: it printed ok
    for target in targets:
        assert not os.path.exists(target), target


@root_only
def test_no_network():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)  # a connection would wait in the backlog until accepted below
    port = server.getsockname()[1]
    program = (
        "import sys\n"
        "del sys.modules['_socket']\n"
        "import socket\n"
        f"s = socket.create_connection(('127.0.0.1', {port}), timeout=1)\n"
        "s.sendall(b'leak')\n"
        "print('ok')"
    )
    reward, _ = _score(program)
    server.settimeout(0.2)
    with pytest.raises(OSError):
        server.accept()
    server.close()
    assert reward == 0.0


@root_only
def test_trainer_environment_is_invisible(monkeypatch):
    monkeypatch.setenv("MR1_SECRET_TOKEN", "hunter2-secret")
    program = (
        "import os\n"
        "seen = repr(dict(os.environ))\n"
        "for path in ('/proc/%d/environ' % os.getppid(), '/proc/1/environ'):\n"
        "    try:\n"
        "        seen += open(path, 'rb').read().decode(errors='replace')\n"
        "    except OSError:\n"
        "        pass\n"
        "print(seen)"
    )
    result = run_python(program, limits=LIMITS)
    assert result.returncode == 0
    assert "hunter2" not in result.stdout
    assert "MR1_SECRET_TOKEN" not in result.stdout


@root_only
def test_runs_unprivileged_in_a_fresh_directory():
    result = run_python("import os\nprint(os.getuid(), os.getgid(), os.getgroups(), os.listdir('.'))")
    uid, gid, *_ = result.stdout.split()
    assert int(uid) >= _UID_BASE and int(gid) >= _UID_BASE
    assert "['main.py']" in result.stdout


def test_exit_early_is_not_a_pass():
    row = {"prompt": "def f(x):\n", "entry_point": "f", "test": "def check(c):\n    assert c(1) == 2\n"}
    assert score_code("```python\nimport os\nos._exit(0)\n```", row, CONFIG) == 0.0
    assert score_code("```python\nimport sys\nsys.exit(0)\n```", row, CONFIG) == 0.0
    forged = "```python\ndef f(x):\n    return 0\nprint('1 1')\n```"
    assert score_code(forged, row, CONFIG) == 0.0
    assert score_code("```python\ndef f(x):\n    return x + 1\n```", row, CONFIG) == 1.0


def test_timeout_is_reported():
    result = run_python("while True:\n    pass", limits=SandboxLimits(wall_s=1.0, cpu_s=5))
    assert result.timed_out and not result.completed


@root_only
def test_socket_modules_import_when_the_network_namespace_isolates():
    result = run_python("import asyncio, socket, os\nprint(sorted(os.listdir('.')))", limits=LIMITS)
    assert result.returncode == 0 and result.stdout.strip() == "['main.py']"


@root_only
def test_without_network_namespace_sockets_are_refused(monkeypatch):
    import megatron_r1.rewards.sandbox as sandbox

    class NoUnshare:
        unshare = staticmethod(lambda flags: -1)
        mount = staticmethod(sandbox._libc.mount)

    monkeypatch.setattr(sandbox, "_libc", NoUnshare)
    result = run_python("import os\nprint(sorted(os.listdir('.')))\nimport socket", limits=LIMITS)
    assert result.stdout.strip() == "['main.py']"
    assert result.returncode != 0 and "_socket" in result.stderr


@root_only
def test_memory_is_bounded_for_the_whole_run():
    from megatron_r1.rewards.sandbox import _own_cgroup_v1

    if _own_cgroup_v1("memory") is None:
        pytest.skip("no cgroup-v1 memory hierarchy")
    program = (
        "import os\n"
        "pids = []\n"
        "for _ in range(6):\n"
        "    pid = os.fork()\n"
        "    if pid == 0:\n"
        "        block = b'x' * (300 << 20)\n"
        "        import time; time.sleep(0.5)\n"
        "        os._exit(0)\n"
        "    pids.append(pid)\n"
        "ok = all(os.waitpid(p, 0)[1] == 0 for p in pids)\n"
        "print('ok' if ok else 'killed')"
    )
    reward, _ = _score(program)  # 6 × 300 MB > the run's 512 MB, though each is under RLIMIT_AS
    assert reward == 0.0
    leftovers = [d for c in ("memory", "pids") for d in os.listdir(_own_cgroup_v1(c) or "/nonexistent")]
    assert not [d for d in leftovers if d.startswith("mr1-sandbox-")]
