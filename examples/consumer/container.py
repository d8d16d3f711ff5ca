"""A container on a remote Docker daemon over mutual TLS, as a Python dynamic resource (docker SDK).

Pulumi's docker provider plugin cannot be had where this project is built, so this small resource does the one
thing the example needs: create a container from an image the daemon has, and remove it on destroy.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

import pulumi
from pulumi.dynamic import CreateResult, DiffResult, ResourceProvider

# Docker 20.10 and later speak it (the machines run 26).
API_VERSION = "1.41"


def _client(props: dict[str, Any]):
    import docker

    tmp = tempfile.mkdtemp(prefix="consumer-tls-")
    paths = {}
    for key, name in (("ca_cert", "ca.pem"), ("client_cert", "cert.pem"), ("client_key", "key.pem")):
        paths[key] = os.path.join(tmp, name)
        with open(os.open(paths[key], os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
            f.write(props[key])
    tls = docker.tls.TLSConfig(client_cert=(paths["client_cert"], paths["client_key"]), ca_cert=paths["ca_cert"],
                               verify=True)  # fmt: skip
    # requests lets REQUESTS_CA_BUNDLE or CURL_CA_BUNDLE replace the CA a session was given, and the machine's own CA
    # is the one that must verify the daemon: the session ignores the environment. With the API version given, the
    # client asks nothing before that.
    client = docker.DockerClient(base_url=props["url"].replace("tcp://", "https://"), tls=tls, version=API_VERSION)
    client.api.trust_env = False
    return client, tmp


class _ContainerProvider(ResourceProvider):
    def create(self, props: dict[str, Any]) -> CreateResult:
        import shutil

        client, tmp = _client(props)
        try:
            container = client.containers.run(props["image"], props["command"], name=props["name"], detach=True)
        finally:
            client.close()
            shutil.rmtree(tmp, ignore_errors=True)
        return CreateResult(container.id, {**props, "container_id": container.id})

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        keys = ("url", "image", "command", "name")
        changed = [k for k in keys if olds.get(k) != news.get(k)]
        return DiffResult(changes=bool(changed), replaces=changed, delete_before_replace=True)

    def delete(self, id_: str, props: dict[str, Any]) -> None:
        import shutil

        import docker

        client, tmp = _client(props)
        try:
            client.containers.get(id_).remove(force=True)
        except docker.errors.NotFound:
            pass
        finally:
            client.close()
            shutil.rmtree(tmp, ignore_errors=True)


class Container(pulumi.dynamic.Resource, module="consumer", name="Container"):
    container_id: pulumi.Output[str]

    def __init__(self, name: str, *, url: pulumi.Input[str], ca_cert: pulumi.Input[str],
                 client_cert: pulumi.Input[str], client_key: pulumi.Input[str], image: str, command: list[str],
                 opts: pulumi.ResourceOptions | None = None):  # fmt: skip
        props = {"url": url, "ca_cert": ca_cert, "client_cert": client_cert, "client_key": client_key,
                 "image": image, "command": command, "name": name, "container_id": None}  # fmt: skip
        secret = pulumi.ResourceOptions(additional_secret_outputs=["client_key"])
        super().__init__(_ContainerProvider(), name, props, pulumi.ResourceOptions.merge(opts, secret))
