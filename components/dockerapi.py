"""Talk to a Docker daemon's API over mutual TLS, the way the docker client does; the ``ApiCheck`` resource."""

from __future__ import annotations

import http.client
import json
import os
import ssl
import tempfile
from typing import Any

import pulumi
from pulumi.dynamic import CreateResult, DiffResult, ResourceProvider, UpdateResult

from components import outputs, wait
from components.dynamic import DynamicResource, inputs_of
from components.errors import StepError
from components.tls import ClientTls

# What a failed connection to the API can raise.
API_ERRORS = (OSError, ssl.SSLError, http.client.HTTPException, ValueError)


class ApiAnswer(RuntimeError):
    """The daemon answered, but not with what was asked for."""


def tls_context(ca_cert: str, client_cert: str, client_key: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=ca_cert)
    with tempfile.TemporaryDirectory() as tmp:
        cert_path, key_path = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
        for path, content in ((cert_path, client_cert), (key_path, client_key)):
            with open(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
                f.write(content)
        context.load_cert_chain(cert_path, key_path)
    return context


def get(host: str, port: int, path: str, context: ssl.SSLContext, timeout: float = 10) -> tuple[int, bytes]:
    conn = http.client.HTTPSConnection(host, port, context=context, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def version(host: str, port: int, context: ssl.SSLContext, timeout: float = 10) -> dict[str, Any]:
    """docker-machine's probe: ``/_ping`` answers OK, then ``/version``. Raises API_ERRORS or ApiAnswer."""
    status, body = get(host, port, "/_ping", context, timeout)
    if status != 200 or body.strip() != b"OK":
        raise ApiAnswer(f"HTTP {status} on /_ping: {body[:200].decode(errors='replace').strip()}")
    status, body = get(host, port, "/version", context, timeout)
    if status != 200:
        raise ApiAnswer(f"HTTP {status} on /version: {body[:200].decode(errors='replace').strip()}")
    return json.loads(body)


class DockerTimeout(RuntimeError):
    pass


def wait_for_docker(host: str, port: int, context: ssl.SSLContext, timeout: float) -> dict[str, Any]:
    """``version`` until it answers; DockerTimeout naming the URL and the last error."""
    try:
        return wait.poll(
            lambda: version(host, port, context), timeout=timeout, interval=1.0, retry_on=(*API_ERRORS, ApiAnswer)
        )
    except wait.WaitTimeout as err:
        raise DockerTimeout(
            f"Docker did not answer on https://{host}:{port} within {timeout:.0f}s: {err.last}"
        ) from None


class _CheckProvider(ResourceProvider):
    INPUTS = ("host", "port", "ca_cert", "client_cert", "client_key", "configuration", "running", "boot")

    def _check(self, props: dict[str, Any], olds: dict[str, Any] | None = None) -> dict[str, Any]:
        if not props.get("running", True):
            # A stopped machine answers nothing; keep what was last verified.
            return {**(olds or {}), **props}
        try:
            context = tls_context(props["ca_cert"], props["client_cert"], props["client_key"])
            answer = wait_for_docker(props["host"], int(props["port"]), context, float(props["timeout"]))
        except (DockerTimeout, ssl.SSLError) as err:
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
