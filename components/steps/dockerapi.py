"""The Docker API over mutual TLS, as the docker client speaks it (the docker SDK), and the ``ApiCheck`` resource.

The client's certificate and key are handed to the SDK as anonymous in-memory files (``memfd``): they never touch
a disk, and nothing is left behind however the process ends.
"""

from __future__ import annotations

import contextlib
import os
import ssl
from collections.abc import Iterator
from typing import Any

import pulumi
from pulumi.dynamic import CreateResult, DiffResult, ResourceProvider, UpdateResult

from components import outputs, wait
from components.dynamic import DynamicResource, inputs_of
from components.errors import StepError
from components.steps.tls import ClientTls

# Docker 20.10 (Debian 12) and later speak it; a fixed version saves asking the daemon first.
API_VERSION = "1.41"


class ApiError(RuntimeError):
    """The daemon could not be reached, or did not answer as asked; ``cause`` is the innermost error (an
    ``ssl.SSLError`` for a certificate problem, an ``OSError`` for a connection)."""

    def __init__(self, message: str, cause: BaseException | None = None):
        super().__init__(message)
        self.cause = cause


def root_cause(err: BaseException) -> BaseException:
    """The innermost error under the SDK's and requests' wrappers (MaxRetryError.reason, __cause__, args[0])."""
    seen = set()
    while id(err) not in seen:
        seen.add(id(err))
        inner = getattr(err, "reason", None)
        if not isinstance(inner, BaseException):
            inner = err.__cause__ or err.__context__
        if not isinstance(inner, BaseException) and err.args and isinstance(err.args[0], BaseException):
            inner = err.args[0]
        if not isinstance(inner, BaseException):
            return err
        err = inner
    return err


@contextlib.contextmanager
def _memory_files(contents: dict[str, str]) -> Iterator[dict[str, str]]:
    fds = {}
    try:
        for name, text in contents.items():
            fds[name] = os.memfd_create(name, os.MFD_CLOEXEC)
            os.write(fds[name], text.encode())
        yield {name: f"/proc/self/fd/{fd}" for name, fd in fds.items()}
    finally:
        for fd in fds.values():
            os.close(fd)


@contextlib.contextmanager
def client(host: str, port: int, tls: ClientTls | tuple[str, str, str], timeout: float = 10) -> Iterator[Any]:
    """A docker SDK ``APIClient`` for ``https://host:port`` with the stack's CA and client certificate."""
    import docker

    if isinstance(tls, ClientTls):
        tls = (tls.ca_cert, tls.client_cert, tls.client_key)
    ca_cert, client_cert, client_key = tls
    with _memory_files({"ca.pem": ca_cert, "cert.pem": client_cert, "key.pem": client_key}) as paths:
        config = docker.tls.TLSConfig(client_cert=(paths["cert.pem"], paths["key.pem"]), ca_cert=paths["ca.pem"],
                                      verify=True)  # fmt: skip
        api = docker.APIClient(base_url=f"https://{host}:{port}", tls=config, version=API_VERSION, timeout=timeout)
        # REQUESTS_CA_BUNDLE and proxies from the environment must not replace the machine's CA or route.
        api.trust_env = False
        try:
            yield api
        finally:
            api.close()


def version(host: str, port: int, tls: ClientTls | tuple[str, str, str], timeout: float = 10) -> dict[str, Any]:
    """docker-machine's probe: ``/_ping`` answers OK, then ``/version``; ApiError otherwise."""
    import docker
    import requests

    try:
        with client(host, port, tls, timeout) as api:
            if not api.ping():
                raise ApiError(f"https://{host}:{port}/_ping did not answer OK")
            return api.version(api_version=False)
    except (requests.RequestException, docker.errors.DockerException, OSError, ValueError) as err:
        cause = root_cause(err)
        raise ApiError(describe(cause), cause) from None


def is_cert_error(err: BaseException | None) -> bool:
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
    if isinstance(err, TimeoutError) or "timed out" in str(err).lower():
        return "i/o timeout"
    if isinstance(err, OSError) and err.strerror:
        return err.strerror.lower()
    return str(err) or type(err).__name__


def wait_for_docker(host: str, port: int, tls: ClientTls | tuple[str, str, str], timeout: float) -> dict[str, Any]:
    """``version`` until it answers; StepError-ready message naming the URL and the last error."""
    try:
        return wait.poll(lambda: version(host, port, tls), timeout=timeout, interval=1.0, retry_on=(ApiError,))
    except wait.WaitTimeout as err:
        raise ApiError(f"Docker did not answer on https://{host}:{port} within {timeout:.0f}s: {err.last}") from None


class _CheckProvider(ResourceProvider):
    INPUTS = ("host", "port", "ca_cert", "client_cert", "client_key", "configuration", "running", "boot")

    def _check(self, props: dict[str, Any], olds: dict[str, Any] | None = None) -> dict[str, Any]:
        if not props.get("running", True):
            # A stopped machine answers nothing; keep what was last verified.
            return {**(olds or {}), **props}
        tls = (props["ca_cert"], props["client_cert"], props["client_key"])
        try:
            answer = wait_for_docker(props["host"], int(props["port"]), tls, float(props["timeout"]))
        except ApiError as err:
            raise StepError(props.get("machine") or props["host"], "docker-check", str(err)) from None
        return {
            **props,
            "server_version": answer.get("Version", ""),
            "api_version": answer.get("ApiVersion", ""),
            "os": answer.get("Os", ""),
            "arch": answer.get("Arch", ""),
        }

    def create(self, props: dict[str, Any]) -> CreateResult:
        return CreateResult(f"{props['host']}:{props['port']}", self._check(props))

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        return DiffResult(changes=any(olds.get(k) != news.get(k) for k in self.INPUTS))

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        return UpdateResult(self._check(news, olds))


class DockerApiCheck(DynamicResource, module=outputs.API_CHECK.module, name=outputs.API_CHECK.name):
    """Proves the daemon answers /_ping and /version over mutual TLS with the client certificate.

    ``configuration`` is a digest of what was provisioned and ``boot`` changes whenever the host booted again: when
    either changes the check runs again, as it does when the machine is started again (``running``). A no-op ``up``
    on a healthy machine contacts nothing; while stopped nothing is contacted either.
    """

    OUTPUTS = ("server_version", "api_version", "os", "arch")

    def __init__(
        self,
        name: str,
        *,
        machine: str,
        host: pulumi.Input[str],
        port: pulumi.Input[int],
        client: ClientTls,
        configuration: pulumi.Input[str],
        boot: pulumi.Input[str] = "",
        running: bool = True,
        timeout: float = 300,
        opts: pulumi.ResourceOptions | None = None,
    ):
        inputs = {**inputs_of(locals()), **client.inputs()}
        del inputs["client"]
        super().__init__(_CheckProvider(), name, inputs, opts)
