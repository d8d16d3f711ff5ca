"""The hub of a stack's private network (the QEMU option ``private_network``; docs/local-vms.md#private-network).

Each member VM has a second NIC, a QEMU ``dgram`` netdev that sends its Ethernet frames to ``hub.sock`` in the
network's directory and receives on a unix datagram socket of its own. The hub repeats every frame to all other
members. The members are the sockets the network's lease files name (``leases/<address>``), so a VM hears ARP
before it has sent anything. A member whose socket is full (the kernel queues 10 datagrams by default) gets its
frames a moment later from a short queue instead of losing them.

The daemon (``python -m components.drivers.qemu.hub DIRECTORY``) runs without root, logs to ``hub.log`` and exits on
SIGTERM or
once its socket is gone. ``start``/``stop`` manage it through ``hub.pid``.
"""

from __future__ import annotations

import collections
import contextlib
import os
import selectors
import signal
import socket
import sys
import time

from components.drivers._local import process

SOCKET, PIDFILE, LOG, LEASES = "hub.sock", "hub.pid", "hub.log", "leases"
# Larger than any frame QEMU sends (its buffer is 68 KiB).
FRAME_MAX = 69632
# Shorter is no Ethernet frame; and QEMU takes an empty datagram for the end of the connection and stops receiving.
FRAME_MIN = 14
# Frames held for a member that cannot take them yet; beyond that the oldest go, as on a congested switch port.
QUEUE_FRAMES = 512
# How often a member whose socket is missing (its VM is not running) is tried again.
RETRY_SECONDS = 1.0


def log(message: str) -> None:
    print(time.strftime("%Y-%m-%dT%H:%M:%S"), message, flush=True)


def read_members(leases: str) -> set[str]:
    """The member sockets named by the lease files (names starting with "." are leases being written)."""
    members = set()
    with contextlib.suppress(FileNotFoundError):
        for name in os.listdir(leases):
            if not name.startswith("."):
                with contextlib.suppress(FileNotFoundError), open(os.path.join(leases, name)) as f:
                    members.add(f.read().strip())
    return members - {""}


class Member:
    """One VM's socket, reached through a socket connected to it: the kernel then says when it has room again."""

    def __init__(self, path: str, selector: selectors.BaseSelector):
        self.path, self.selector = path, selector
        self.sock: socket.socket | None = None
        self.queue: collections.deque[bytes] = collections.deque(maxlen=QUEUE_FRAMES)
        self.retry_at = 0.0

    def _connect(self) -> bool:
        if self.sock is None and time.monotonic() >= self.retry_at:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            sock.setblocking(False)
            try:
                sock.connect(self.path)
            except OSError:
                sock.close()
                self.retry_at = time.monotonic() + RETRY_SECONDS
                return False
            self.sock = sock
        return self.sock is not None

    def send(self, frame: bytes) -> None:
        self.queue.append(frame)
        if len(self.queue) == 1:
            self.flush()

    def flush(self) -> None:
        while self.queue:
            if not self._connect():
                self.queue.clear()  # its VM is not running: the frames go, as on an unplugged port
                break
            try:
                self.sock.send(self.queue[0])
            except BlockingIOError:
                self._watch(True)
                return
            except OSError:
                # Its VM stopped, or restarted with a new socket at the same path: reconnect for the next frame.
                self.close()
            self.queue.popleft()
        self._watch(False)

    def _watch(self, writable: bool) -> None:
        """Wait for room in the member's socket (or stop waiting)."""
        if self.sock is None:
            return
        try:
            self.selector.get_key(self.sock)
            watched = True
        except KeyError:
            watched = False
        if writable and not watched:
            self.selector.register(self.sock, selectors.EVENT_WRITE, self)
        elif watched and not writable:
            self.selector.unregister(self.sock)

    def close(self) -> None:
        if self.sock is not None:
            self._watch(False)
            self.sock.close()
            self.sock = None


class Hub:
    def __init__(self, directory: str):
        self.path = os.path.join(directory, SOCKET)
        self.leases = os.path.join(directory, LEASES)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        self.sock.bind(self.path)
        self.sock.setblocking(False)
        self.inode = os.stat(self.path).st_ino
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.sock, selectors.EVENT_READ)
        self.members: dict[str, Member] = {}
        self.leases_seen: int | None = -1

    def refresh(self) -> None:
        """Re-read the members when the lease directory changed (a lease is written before its VM starts)."""
        try:
            seen = os.stat(self.leases).st_mtime_ns
        except FileNotFoundError:
            seen = None
        if seen == self.leases_seen:
            return
        self.leases_seen = seen
        wanted = read_members(self.leases)
        for path in set(self.members) - wanted:
            self.members.pop(path).close()
        for path in wanted - set(self.members):
            self.members[path] = Member(path, self.selector)
        log(f"members: {', '.join(sorted(self.members)) or 'none'}")

    def forward(self, frame: bytes, sender: str) -> None:
        self.refresh()
        for path, member in self.members.items():
            if path != sender:
                member.send(frame)

    def receive(self) -> None:
        while True:
            try:
                frame, sender = self.sock.recvfrom(FRAME_MAX)
            except BlockingIOError:
                return
            if len(frame) >= FRAME_MIN:
                self.forward(frame, sender if isinstance(sender, str) else "")

    def owns_socket(self) -> bool:
        try:
            return os.stat(self.path).st_ino == self.inode
        except FileNotFoundError:
            return False

    def run(self) -> None:
        self.refresh()
        while self.owns_socket():
            for key, _ in self.selector.select(timeout=RETRY_SECONDS):
                if key.fileobj is self.sock:
                    self.receive()
                else:
                    key.data.flush()
        log("the hub's socket is gone: exiting")

    def close(self) -> None:
        if self.owns_socket():
            os.unlink(self.path)
        self.sock.close()


def main(directory: str) -> None:
    # `start` returns once the socket is bound, so a `stop` may come before the handler that removes it is set:
    # SIGTERM waits until the hub can clean up after itself.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    hub = Hub(directory)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
        log(f"hub on {hub.path}")
        hub.run()
    finally:
        hub.close()


# --- managing the daemon -------------------------------------------------------------------------------------------

MODULE = "components.drivers.qemu.hub"


def _pid(directory: str) -> int | None:
    """The hub's pid, if that process is this directory's hub (after a reboot the pid may be another program's)."""
    return process.verified_pid(os.path.join(directory, PIDFILE), MODULE, directory)


def _bound(directory: str) -> bool:
    """Whether a process is bound to the hub's socket (after a reboot the file is still there, unbound)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(os.path.join(directory, SOCKET))
        except OSError:
            return False
    return True


def running(directory: str) -> bool:
    return _pid(directory) is not None and _bound(directory)


def start(directory: str, timeout: float = 15) -> None:
    """Start the hub of ``directory`` unless it runs; return once its socket exists."""
    if running(directory):
        return
    stop(directory)
    child = process.spawn_module(MODULE, [directory], pidfile=os.path.join(directory, PIDFILE),
                                 log=os.path.join(directory, LOG))  # fmt: skip
    deadline = time.monotonic() + timeout
    while not _bound(directory):
        if child.poll() is not None or time.monotonic() > deadline:
            with open(os.path.join(directory, LOG)) as f:
                tail = f.read()[-600:].strip()
            stop(directory)
            raise RuntimeError(f"the private network's hub did not start: {tail or 'no output'}")
        time.sleep(0.05)


def stop(directory: str) -> None:
    process.stop(os.path.join(directory, PIDFILE), MODULE, directory)


if __name__ == "__main__":
    main(sys.argv[1])
