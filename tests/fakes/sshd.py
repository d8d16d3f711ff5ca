"""A real SSH server (paramiko's server side) on 127.0.0.1 that accepts one public key and records what it is sent."""

from __future__ import annotations

import socket
import socketserver
import threading

import paramiko


class _Server(paramiko.ServerInterface):
    def __init__(self, owner: FakeSshd):
        self.owner = owner
        self.exec_requested = threading.Event()

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        accepted = key.asbytes() == self.owner.client_key.asbytes()
        return paramiko.AUTH_SUCCESSFUL if accepted else paramiko.AUTH_FAILED

    def get_allowed_auths(self, username: str) -> str:
        return "publickey"

    def check_channel_request(self, kind: str, chanid: int) -> int:
        return paramiko.OPEN_SUCCEEDED if kind == "session" else paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED

    def check_channel_exec_request(self, channel: paramiko.Channel, command: bytes) -> bool:
        self.owner.commands.append(command.decode())
        self.exec_requested.set()
        return True


class FakeSshd:
    """Serves with ``host_key`` (a paramiko key); logins with ``client_key`` succeed; every exec request and what came
    on its stdin are recorded, and each command answers with its stdin's length."""

    def __init__(self, host_key: paramiko.PKey, client_key: paramiko.PKey):
        self.host_key, self.client_key = host_key, client_key
        self.commands: list[str] = []
        self.received: list[bytes] = []
        self.connections = 0
        self.transports: list[paramiko.Transport] = []
        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), self._handler())
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def _handler(self) -> type[socketserver.BaseRequestHandler]:
        sshd = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                sshd._serve(self.request)

        return Handler

    def _serve(self, conn: socket.socket) -> None:
        self.connections += 1
        transport = paramiko.Transport(conn)
        self.transports.append(transport)
        transport.add_server_key(self.host_key)
        server = _Server(self)
        try:
            transport.start_server(server=server)
        except (paramiko.SSHException, EOFError):
            return
        self._session(transport, server)

    def _session(self, transport: paramiko.Transport, server: _Server) -> None:
        """The client's one command: its stdin until EOF, answered once the exec request was acknowledged."""
        channel = transport.accept(10)
        if channel is None or not server.exec_requested.wait(10):
            return
        data = b""
        while chunk := channel.recv(65536):
            data += chunk
        self.received.append(data)
        channel.sendall(str(len(data)).encode())
        channel.send_exit_status(0)
        channel.close()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        for transport in self.transports:
            transport.close()
