"""A ``docker context`` per machine: ``docker --context NAME …`` reaches it over mutual TLS.

Used by ``scripts/machine context NAME`` and, as the ``DockerContext`` dynamic resource, by ``up``:
create/update write the client material to the machine's DOCKER_CERT_PATH
(``~/.docker/machine/machines/<machine>``) and run ``docker context create|update``; delete runs
``docker context rm -f`` (a context already gone is fine) and removes those files. Where ``docker`` is
not on PATH the resource does nothing and says so in its ``note`` output.

Context names: the machine's name, except where docker refuses it — ``default`` is docker's own
context and names need two characters — which get ``-machine`` appended (``default-machine``).
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import subprocess
from typing import Any

import pulumi
from pulumi.dynamic import CreateResult, DiffResult, ResourceProvider, UpdateResult

from components import outputs
from components.dynamic import DynamicResource
from components.tls import ClientTls

DESCRIPTION = "docker-machine-pulumi: machine {machine}"
_CONTEXT_NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.+-]+$")
_RESERVED = frozenset({"default"})
class DockerContextError(RuntimeError):
    pass


def context_name(machine_name: str) -> str:
    if machine_name in _RESERVED or not _CONTEXT_NAME_RE.match(machine_name):
        return f"{machine_name}-machine"
    return machine_name


def docker_path() -> str | None:
    return shutil.which("docker")


def _docker(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=60)


def endpoint(url: str, directory: str) -> str:
    """The ``--docker`` value (docker parses it as one CSV record: quote fields with commas or quotes)."""
    fields = [
        f"host={url}",
        f"ca={os.path.join(directory, 'ca.pem')}",
        f"cert={os.path.join(directory, 'cert.pem')}",
        f"key={os.path.join(directory, 'key.pem')}",
    ]
    out = io.StringIO()
    csv.writer(out, lineterminator="").writerow(fields)
    return out.getvalue()


def exists(name: str) -> bool:
    return _docker("context", "inspect", name).returncode == 0


def description_of(name: str) -> str | None:
    """The context's description (None when there is no such context)."""
    result = _docker("context", "inspect", name)
    if result.returncode != 0:
        return None
    try:
        (context,) = json.loads(result.stdout)
        return (context.get("Metadata") or {}).get("Description", "")
    except (ValueError, TypeError):
        return ""


def upsert(name: str, machine_name: str, url: str, directory: str) -> str:
    """Create the context, or update it when it exists; return ``created`` or ``updated``."""
    action = "update" if exists(name) else "create"
    result = _docker(
        "context", action, name,
        "--description", DESCRIPTION.format(machine=machine_name),
        "--docker", endpoint(url, directory),
    )  # fmt: skip
    if result.returncode != 0:
        raise DockerContextError(f"docker context {action} {name}: {result.stderr.strip() or result.stdout.strip()}")
    return f"{action}d"


def remove(name: str) -> bool:
    """``docker context rm -f``; False when there was no such context."""
    if not exists(name):
        return False
    result = _docker("context", "rm", "--force", name)
    if result.returncode == 0:
        return True
    text = (result.stderr + result.stdout).lower()
    if "not found" in text or "does not exist" in text or "no such" in text:
        return False
    raise DockerContextError(f"docker context rm {name}: {result.stderr.strip() or result.stdout.strip()}")


def apply(machine_name: str, url: str, ca_cert: str, client_cert: str, client_key: str) -> dict[str, Any]:
    """Write the certificates and create/update the context; what the resource reports as outputs."""
    name = context_name(machine_name)
    if docker_path() is None:
        return {"context_name": name, "managed": False, "note": "docker is not on PATH: no docker context was made"}
    directory = outputs.cert_path(machine_name)
    outputs.write_client_certs(directory, ca_cert, client_cert, client_key)
    action = upsert(name, machine_name, url, directory)
    return {"context_name": name, "managed": True, "note": f"docker context {name} {action}: docker --context {name}"}


class _ContextProvider(ResourceProvider):
    INPUTS = ("machine_name", "url", "ca_cert", "client_cert", "client_key")

    def create(self, props: dict[str, Any]) -> CreateResult:
        outs = apply(*(props[k] for k in self.INPUTS))
        return CreateResult(outs["context_name"], {**props, **outs})

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        changed = [k for k in self.INPUTS if olds.get(k) != news.get(k)]
        return DiffResult(
            changes=bool(changed) or (not olds.get("managed") and docker_path() is not None),
            replaces=[k for k in changed if k == "machine_name"],
            delete_before_replace=True,
        )

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        return UpdateResult({**news, **apply(*(news[k] for k in self.INPUTS))})

    def delete(self, _id: str, props: dict[str, Any]) -> None:
        if not props.get("managed") or docker_path() is None:
            return
        remove(props.get("context_name") or context_name(props["machine_name"]))
        outputs.remove_client_certs(outputs.cert_path(props["machine_name"]))


class DockerContext(DynamicResource, module=outputs.DOCKER_CONTEXT.module, name=outputs.DOCKER_CONTEXT.name):
    """``docker context <machine>`` on the host running ``up`` (nothing, with a ``note``, without docker)."""

    SECRET_OUTPUTS = ("client_key",)
    OUTPUTS = ("context_name", "managed", "note")

    def __init__(
        self,
        name: str,
        machine_name: pulumi.Input[str],
        url: pulumi.Input[str],
        client: ClientTls,
        opts: pulumi.ResourceOptions | None = None,
    ):
        inputs = {"machine_name": machine_name, "url": url, **client.inputs()}
        super().__init__(_ContextProvider(), name, inputs, opts)
