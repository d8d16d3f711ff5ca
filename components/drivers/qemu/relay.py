"""Published TCP ports that hold a burst of connections (docs/ports.md#under-load).

QEMU's user-mode network listens for a host forward with a backlog of 1 (libslirp's ``listen(s, 1)``): fifty clients
connecting at once overflow it, their SYNs are dropped, and each waits a retransmit (1 s, then 3 s, 7 s…) or times out.
A connection can even look established to the client while the listener dropped its last ACK, and then carry nothing.
So the port forwarder listens on the published port itself, with a deep backlog, and relays each connection to a
slirp forward on a private loopback port, opening one only when QEMU has accepted the one before: the kernel shows a
listener's pending connections as its receive queue (/proc/net/tcp), so the slirp listener never overflows.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading

BACKLOG = 1024
CHUNK = 65536
CONNECT_TIMEOUT = 30.0
LISTEN_STATE = "0A"


def pending(port: int) -> int:
    """Connections waiting in the accept queue of the listener on 127.0.0.1:``port`` (0 when there is none)."""
    local = f"0100007F:{port:04X}"
    with open("/proc/net/tcp") as table:
        for line in table:
            fields = line.split()
            if len(fields) > 4 and fields[1] == local and fields[3] == LISTEN_STATE:
                return int(fields[4].split(":")[1], 16)
    return 0


class Relays:
    """The relays of one VM, served by one event loop in a thread of the forwarder."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.servers: dict[int, asyncio.Server] = {}
        # asyncio holds a connection's task only weakly once its client half-closed: we hold them until they end.
        self.tasks: set[asyncio.Task] = set()
        threading.Thread(target=self.loop.run_forever, daemon=True, name="relays").start()

    def add(self, port: int, upstream: int) -> None:
        """Listen on 127.0.0.1:``port`` and relay to 127.0.0.1:``upstream``; OSError when the port is taken."""
        asyncio.run_coroutine_threadsafe(self._listen(port, upstream), self.loop).result(10)

    def remove(self, port: int) -> None:
        server = self.servers.pop(port, None)
        if server is not None:
            self.loop.call_soon_threadsafe(server.close)

    async def _listen(self, port: int, upstream: int) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(("127.0.0.1", port))
            listener.listen(BACKLOG)
            listener.setblocking(False)
        except OSError:
            listener.close()
            raise
        one_at_a_time = asyncio.Lock()

        def connected(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = self.loop.create_task(_relay(reader, writer, upstream, one_at_a_time))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

        self.servers[port] = await asyncio.start_server(connected, sock=listener, backlog=BACKLOG)


async def _relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, upstream: int,
                 one_at_a_time: asyncio.Lock) -> None:  # fmt: skip
    try:
        async with one_at_a_time:
            deadline = asyncio.get_running_loop().time() + CONNECT_TIMEOUT
            while pending(upstream) and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.001)
            up_reader, up_writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", upstream),
                                                          CONNECT_TIMEOUT)  # fmt: skip
    except (OSError, asyncio.TimeoutError):
        writer.close()
        return
    try:
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
    finally:
        for side in (writer, up_writer):
            side.close()


async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    """Copy until end of file, then half-close: a client that shuts down its sending side still gets the answer."""
    with contextlib.suppress(OSError, ConnectionError):
        while data := await source.read(CHUNK):
            sink.write(data)
            await sink.drain()
        if sink.can_write_eof():
            sink.write_eof()
