"""The processes local drivers start and later signal: QEMU, virtiofsd, the port forwarder, the private network's hub,
dnsmasq.

A pidfile is believed only when the process it names is the one that wrote it: its command line holds the arguments
its starter gave it (the pidfile's own path, the daemon's directory) and it started before the pidfile was written.
After a host reboot a pid is often reused by an unrelated program: that program is never signalled, and the VM or
daemon counts as not running.

Daemons (the forwarder, the hub) are started detached through ``spawn``: their own session, their output in a log,
and an environment of their own that carries none of the caller's secrets (passphrase, backend URL).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from functools import cache

from components import environment, wait

# A process may start this long after the pidfile's time stamp and still be the one that wrote it (clock ticks,
# file systems with coarse times).
START_SLACK = 2.0


def read_pid(path: str) -> int | None:
    """The pid a pidfile names: QEMU's (a number) or ours (JSON with ``pid``)."""
    try:
        with open(path) as f:
            text = f.read().strip()
    except OSError:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    pid = value.get("pid") if isinstance(value, dict) else value
    return pid if isinstance(pid, int) and pid > 0 else None


def command_line(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    return [arg.decode(errors="replace") for arg in raw.split(b"\0")[:-1]] if raw else None


@cache
def _boot_time() -> float:
    with open("/proc/stat") as f:
        return float(next(line.split()[1] for line in f if line.startswith("btime ")))


def started_at(pid: int) -> float | None:
    """When the process started (seconds since the epoch), None if it is gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
    except OSError:
        return None
    if fields[0] == "Z":
        return None
    # Field 22 of stat (the 20th after the command's closing parenthesis): start time in clock ticks after boot.
    return _boot_time() + int(fields[19]) / os.sysconf("SC_CLK_TCK")


def verified_pid(pidfile: str, *arguments: str) -> int | None:
    """The live process the pidfile names, if its command line holds every one of ``arguments`` and it started
    before the pidfile was written; else None (no pidfile, a dead process, or a pid another program reuses)."""
    pid = read_pid(pidfile)
    if pid is None:
        return None
    args, start = command_line(pid), started_at(pid)
    try:
        written = os.stat(pidfile).st_mtime
    except OSError:
        return None
    if args is None or start is None or start > written + START_SLACK:
        return None
    return pid if all(argument in args for argument in arguments) else None


def alive(pid: int | None) -> bool:
    return pid is not None and started_at(pid) is not None


def settle(condition: Callable[[], bool], timeout: float, interval: float = 0.5,
           sleep: Callable[[float], None] | None = None) -> bool:  # fmt: skip
    """Wait up to ``timeout`` s for ``condition()``; whether it came true (e.g. a VM that powered off)."""
    try:
        return bool(wait.poll(condition, timeout=timeout, interval=interval, what="the process", sleep=sleep))
    except wait.WaitTimeout:
        return False


def terminate(pid: int | None, timeout: float = 10) -> None:
    """SIGTERM, then SIGKILL after ``timeout`` s; ``pid`` must come from ``verified_pid``."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if not alive(pid):
            return
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        settle(lambda: not alive(pid), timeout, 0.1)


def stop(pidfile: str, *arguments: str, timeout: float = 10) -> None:
    """Stop the process a pidfile names (only if it is really ours) and remove the pidfile."""
    terminate(verified_pid(pidfile, *arguments), timeout)
    try:
        os.unlink(pidfile)
    except FileNotFoundError:
        pass


def project_root() -> str:
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def daemon_env() -> dict[str, str]:
    """A daemon's environment: the minimal one, and the project on PYTHONPATH."""
    return {**environment.minimal(), "PYTHONPATH": project_root()}


def spawn(argv: Sequence[str], *, pidfile: str, log: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    """``argv`` detached: its own session, stdin closed, output appended to ``log``, a pidfile naming it; neither the
    engine nor scripts/machine waits for it or takes it down. Its environment is ``env``, else the minimal one."""
    with open(log, "a") as log_file:
        process = subprocess.Popen(
            list(argv), cwd=project_root(), stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
            start_new_session=True, env=env if env is not None else environment.minimal(),
        )  # fmt: skip
    tmp = f"{pidfile}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump({"pid": process.pid, "program": os.path.basename(argv[0])}, f)
    os.replace(tmp, pidfile)
    return process


def spawn_module(module: str, arguments: Sequence[str], *, pidfile: str, log: str) -> subprocess.Popen:
    """``python -m module arguments…``, detached as ``spawn`` does, with the project on PYTHONPATH."""
    return spawn([sys.executable, "-m", module, *arguments], pidfile=pidfile, log=log, env=daemon_env())
