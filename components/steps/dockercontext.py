"""A ``docker context`` per machine: ``docker --context NAME …`` reaches it over mutual TLS.

Used by ``scripts/machine context NAME`` and, as the ``DockerContext`` dynamic resource, by ``up``:
create/update write the client material to the machine's DOCKER_CERT_PATH
(``~/.docker/machine/machines/<machine>``, components.outputs.cert_path) and run ``docker context
create|update``; delete runs ``docker context rm -f`` (a context already gone is fine) and removes those
files. Where ``docker`` is not on PATH the resource does nothing and says so in its ``note`` output.

A context is ours when its description says so, naming the machine and its stack (components.ownership): a
context of that name that the user made, or another stack's, is left as it is, and ``up`` says so in one line.

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
import sys
from typing import Any

import pulumi
from pulumi.dynamic import CreateResult, DiffResult, ResourceProvider, UpdateResult

from components import environment, outputs, ownership
from components.dynamic import DynamicResource
from components.steps.tls import ClientTls

# What our contexts say of themselves; before ownership markers, only the first sentence.
LEGACY_DESCRIPTION = "docker-machine-pulumi: machine {machine}"
DESCRIPTION = LEGACY_DESCRIPTION + " of stack {stack} ({short_id})"
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
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=60,
                          env=environment.minimal("DOCKER_CONFIG"))  # fmt: skip


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


def description(machine_name: str, owner: ownership.Owner) -> str:
    return DESCRIPTION.format(machine=machine_name, stack=owner.stack, short_id=owner.short_id)


def ours(found: str | None, machine_name: str, owner: ownership.Owner) -> bool:
    """Whether a context's description (None: no such context) is ours to update: ours, or ours from before
    ownership markers."""
    return found in (description(machine_name, owner), LEGACY_DESCRIPTION.format(machine=machine_name))


def refusal(name: str, found: str, machine_name: str) -> str:
    whose = f"another stack's ({found})" if found.startswith(LEGACY_DESCRIPTION.format(machine=machine_name)) else (
        "one this project did not make")  # fmt: skip
    return (f"docker context {name} exists and is {whose}: it is left as it was; "
            f"`scripts/machine env {machine_name}` points docker at the machine")  # fmt: skip


def upsert(name: str, machine_name: str, url: str, directory: str, owner: ownership.Owner) -> str:
    """Create the context, or update it when it is ours; ``created`` or ``updated``; ownership.NotOurs (one line)
    for a context someone else made, DockerContextError when docker fails."""
    found = description_of(name)
    if found is not None and not ours(found, machine_name, owner):
        raise ownership.NotOurs(refusal(name, found, machine_name))
    action = "update" if found is not None else "create"
    result = _docker(
        "context", action, name,
        "--description", description(machine_name, owner),
        "--docker", endpoint(url, directory),
    )  # fmt: skip
    if result.returncode != 0:
        raise DockerContextError(f"docker context {action} {name}: {result.stderr.strip() or result.stdout.strip()}")
    return f"{action}d"


def describe(name: str, text: str) -> None:
    """Give a context of ours a new description (its stack moved to another backend)."""
    result = _docker("context", "update", name, "--description", text)
    if result.returncode != 0:
        raise DockerContextError(f"docker context update {name}: {result.stderr.strip() or result.stdout.strip()}")


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


def apply(props: dict[str, Any]) -> dict[str, Any]:
    """Write the certificates and create/update the context; what the resource reports as outputs. A context or a
    cert directory that is not ours is left alone and the note (also printed: `up` shows it) says why."""
    machine_name, owner = props["machine_name"], ownership.Owner.from_dict(props["owner"])
    name = context_name(machine_name)
    if docker_path() is None:
        return {"context_name": name, "managed": False, "refused": False,
                "note": "docker is not on PATH: no docker context was made"}  # fmt: skip
    try:
        directory = outputs.cert_path(machine_name, owner)
        outputs.write_client_certs(directory, owner, props["ca_cert"], props["client_cert"], props["client_key"])
        action = upsert(name, machine_name, props["url"], directory, owner)
    except ownership.NotOurs as err:
        print(f"machine {machine_name}: {err}", file=sys.stderr)
        return {"context_name": name, "managed": False, "refused": True, "note": str(err)}
    note = f"docker context {name} {action}: docker --context {name}"
    return {"context_name": name, "managed": True, "refused": False, "note": note}


def forget(props: dict[str, Any]) -> None:
    """Remove the context and the cert copies, when they are ours."""
    machine_name, owner = props["machine_name"], ownership.Owner.from_dict(props.get("owner"))
    name = props.get("context_name") or context_name(machine_name)
    if owner is None or not ours(description_of(name), machine_name, owner):
        return
    remove(name)
    outputs.remove_client_certs(outputs.cert_path(machine_name, owner), owner)


class _ContextProvider(ResourceProvider):
    INPUTS = ("machine_name", "url", "ca_cert", "client_cert", "client_key", "owner")

    def create(self, props: dict[str, Any]) -> CreateResult:
        outs = apply(props)
        return CreateResult(outs["context_name"], {**props, **outs})

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        changed = [k for k in self.INPUTS if olds.get(k) != news.get(k)]
        return DiffResult(
            # docker installed since: make the context now (one refused stays refused until its inputs change).
            changes=bool(changed) or (not olds.get("managed") and not olds.get("refused") and bool(docker_path())),
            replaces=[k for k in changed if k == "machine_name"],
            delete_before_replace=True,
        )

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        return UpdateResult({**news, **apply(news)})

    def delete(self, _id: str, props: dict[str, Any]) -> None:
        if props.get("managed") and docker_path() is not None:
            forget(props)


class DockerContext(DynamicResource, module=outputs.DOCKER_CONTEXT.module, name=outputs.DOCKER_CONTEXT.name):
    """``docker context <machine>`` on the host running ``up`` (nothing, with a ``note``, without docker)."""

    SECRET_OUTPUTS = ("client_key",)
    OUTPUTS = ("context_name", "managed", "refused", "note")

    def __init__(
        self,
        name: str,
        machine_name: pulumi.Input[str],
        url: pulumi.Input[str],
        client: ClientTls,
        owner: dict[str, str],
        opts: pulumi.ResourceOptions | None = None,
    ):
        inputs = {"machine_name": machine_name, "url": url, **client.inputs(), "owner": owner}
        super().__init__(_ContextProvider(), name, inputs, opts)
