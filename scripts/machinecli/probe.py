"""Live state of a machine, whatever its driver (docker-machine.md §1.4, §5: nothing cached).

1. Docker answers ``/_ping`` over mutual TLS with the stack's client certificate → ``Running`` (and
   ``/version`` gives the DOCKER column);
2. else the SSH port accepts a TCP connection → ``Running``, with the Docker error in ERRORS;
3. else ``Stopped``; ``Timeout`` when the probe itself outlives the timeout (as docker-machine's ``ls``).
"""

from __future__ import annotations

import errno
import http.client
import json
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from typing import Any

from .stacks import Machine

_contexts: dict[tuple[str, str, str], ssl.SSLContext] = {}
_contexts_lock = threading.Lock()


def tls_context(ca_cert: str, client_cert: str, client_key: str) -> ssl.SSLContext:
    from components.dockerapi import tls_context as make

    key = (ca_cert, client_cert, client_key)
    with _contexts_lock:
        if key not in _contexts:
            _contexts[key] = make(ca_cert, client_cert, client_key)
        return _contexts[key]


def docker_get(machine: Machine, path: str, timeout: float) -> tuple[int, bytes]:
    """GET ``path`` from the machine's Docker API with the client certificate."""
    from components.dockerapi import get

    ca, cert, key = machine.tls
    if not (ca and cert and key and machine.url):
        raise ValueError("the stack outputs have no URL or client certificate for this machine")
    try:
        context = tls_context(ca, cert, key)
    except ssl.SSLError as err:
        raise ValueError(f"the stack's client certificate cannot be loaded: {err}") from None
    host, port = machine.docker_host
    return get(host, port, path, context, timeout=max(timeout, 0.1))


def is_cert_error(err: BaseException) -> bool:
    """The server's certificate does not verify, or the server refuses our client certificate."""
    if isinstance(err, ssl.SSLCertVerificationError):
        return True
    if isinstance(err, ssl.SSLError):
        text = f"{err.reason or ''} {err}".upper()
        return any(k in text for k in ("CERTIFICATE", "UNKNOWN_CA", "BAD_CERT", "CERT_REQUIRED", "DECRYPT_ERROR"))
    return False


def describe(err: BaseException) -> str:
    """An error as one short line (no errno prefix, no OpenSSL source location)."""
    if isinstance(err, ssl.SSLCertVerificationError):
        return f"x509: {err.verify_message}" if err.verify_message else "x509: certificate verify failed"
    if isinstance(err, ssl.SSLError):
        return f"tls: {(err.reason or str(err)).lower().replace('_', ' ')}"
    if isinstance(err, TimeoutError):
        return "i/o timeout"
    if isinstance(err, OSError) and err.strerror:
        return err.strerror.lower()
    return str(err) or type(err).__name__


class TlsCheckError(Exception):
    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind  # cert | connect


def check_tls(machine: Machine, timeout: float = 20) -> None:
    """docker-machine's ValidateCertificate: a TLS handshake (and a ping) with the client certificate."""
    try:
        status, body = docker_get(machine, "/_ping", timeout)
    except (OSError, ssl.SSLError, http.client.HTTPException, ValueError) as err:
        raise TlsCheckError("cert" if is_cert_error(err) else "connect", describe(err)) from None
    if status != 200:
        raise TlsCheckError("connect", f"HTTP {status}: {body[:200].decode(errors='replace')}")


def tcp_state(host: str, port: int, timeout: float) -> str:
    """``open``, ``refused`` (nothing listens: a stopped VM's forward, a host without sshd) or ``timeout``."""
    if not host or not port:
        return "refused"
    try:
        with socket.create_connection((host, int(port)), timeout=max(timeout, 0.1)):
            return "open"
    except TimeoutError:
        return "timeout"
    except OSError as err:
        if err.errno in (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ECONNRESET):
            return "refused"
        return "timeout" if err.errno == errno.ETIMEDOUT else "refused"


@dataclass
class Probe:
    state: str
    docker_version: str = ""
    error: str = ""
    cert_error: bool = False
    response_time: float = 0.0
    api: dict[str, Any] | None = None


def probe(machine: Machine, timeout: float = 10) -> Probe:
    start = time.monotonic()

    def left() -> float:
        return timeout - (time.monotonic() - start)

    tls_error: BaseException | str
    try:
        status, body = docker_get(machine, "/_ping", left())
        if status == 200:
            status, body = docker_get(machine, "/version", left())
            if status == 200:
                version = json.loads(body)
                return Probe("Running", version.get("Version", ""), response_time=time.monotonic() - start, api=version)
        tls_error = f"HTTP {status}: {body[:200].decode(errors='replace').strip()}"
    except ValueError as err:
        if not machine.url:
            return Probe("Error", error=str(err), response_time=time.monotonic() - start)
        tls_error = err
    except (OSError, ssl.SSLError, http.client.HTTPException) as err:
        tls_error = err
    cert_error = isinstance(tls_error, BaseException) and is_cert_error(tls_error)
    text = describe(tls_error) if isinstance(tls_error, BaseException) else tls_error
    host, port = machine.docker_host if machine.url else ("", 0)
    message = f"Unable to query docker version: Get https://{host}:{port}/version: {text}"
    if left() <= 0:
        return Probe("Timeout", response_time=timeout)
    reach = tcp_state(machine.ssh.get("host", ""), machine.ssh.get("port", 22), left())
    elapsed = time.monotonic() - start
    if reach == "open":
        return Probe("Running", "", message, cert_error, elapsed)
    if reach == "timeout" or left() <= 0:
        return Probe("Timeout", response_time=timeout)
    return Probe("Stopped", response_time=elapsed)


def probe_all(machines: list[Machine], timeout: float = 10) -> list[Probe]:
    """Probe every machine in parallel; one that has not answered within ``timeout`` is ``Timeout``."""
    results: list[Probe | None] = [None] * len(machines)

    def work(i: int) -> None:
        try:
            results[i] = probe(machines[i], timeout)
        except Exception as err:  # noqa: BLE001 - one broken machine must not hide the others
            results[i] = Probe("Error", error=str(err))

    threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(len(machines))]
    deadline = time.monotonic() + timeout + 0.5
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    return [r if r is not None else Probe("Timeout", response_time=timeout) for r in results]
