"""Talk to a Docker daemon's API over mutual TLS, the way the docker client does."""

from __future__ import annotations

import http.client
import json
import os
import ssl
import tempfile
import time
from typing import Any

import pulumi
from pulumi.dynamic import CreateResult, DiffResult, ResourceProvider, UpdateResult


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


def wait_for_docker(host: str, port: int, context: ssl.SSLContext, timeout: float) -> dict[str, Any]:
    """Poll /_ping until it answers OK, then return /version. Raises with the last error on timeout."""
    deadline = time.monotonic() + timeout
    last_error = "no attempt"
    while True:
        try:
            status, body = get(host, port, "/_ping", context)
            if status == 200 and body.strip() == b"OK":
                status, body = get(host, port, "/version", context)
                if status == 200:
                    return json.loads(body)
            last_error = f"HTTP {status}: {body[:200]!r}"
        except (OSError, ssl.SSLError, http.client.HTTPException) as err:
            last_error = str(err) or type(err).__name__
        if time.monotonic() > deadline:
            raise RuntimeError(f"Docker did not answer on https://{host}:{port} within {timeout:.0f}s: {last_error}")
        time.sleep(1)


class _CheckProvider(ResourceProvider):
    def _check(self, props: dict[str, Any], olds: dict[str, Any] | None = None) -> dict[str, Any]:
        if not props.get("running", True):
            # A stopped machine answers nothing; keep what was last verified.
            return {**(olds or {}), **props}
        context = tls_context(props["ca_cert"], props["client_cert"], props["client_key"])
        version = wait_for_docker(props["host"], int(props["port"]), context, float(props["timeout"]))
        return {
            **props,
            "server_version": version.get("Version", ""),
            "api_version": version.get("ApiVersion", ""),
            "os": version.get("Os", ""),
            "arch": version.get("Arch", ""),
        }

    def create(self, props: dict[str, Any]) -> CreateResult:
        outs = self._check(props)
        return CreateResult(f"{props['host']}:{props['port']}", outs)

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        keys = ("host", "port", "ca_cert", "client_cert", "client_key", "configuration", "running")
        return DiffResult(changes=any(olds.get(k) != news.get(k) for k in keys))

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        return UpdateResult(self._check(news, olds))


class DockerApiCheck(pulumi.dynamic.Resource, module="docker", name="ApiCheck"):
    """Proves the daemon answers /_ping and /version over mutual TLS with the client certificate.

    ``configuration`` is a digest of what was provisioned: when it changes the check runs again, as it
    does when the machine is started again (``running``); while stopped nothing is contacted.
    """

    server_version: pulumi.Output[str]
    api_version: pulumi.Output[str]

    def __init__(
        self,
        name: str,
        host: pulumi.Input[str],
        port: pulumi.Input[int],
        ca_cert: pulumi.Input[str],
        client_cert: pulumi.Input[str],
        client_key: pulumi.Input[str],
        configuration: pulumi.Input[str],
        running: bool = True,
        timeout: float = 300,
        opts: pulumi.ResourceOptions | None = None,
    ):
        props = {
            "host": host,
            "port": port,
            "ca_cert": ca_cert,
            "client_cert": client_cert,
            "client_key": client_key,
            "configuration": configuration,
            "running": running,
            "timeout": timeout,
            "server_version": None,
            "api_version": None,
            "os": None,
            "arch": None,
        }
        super().__init__(_CheckProvider(), name, props, opts)
