"""The contract between the program and everything that reads a stack: outputs, type tokens, client cert files.

``__main__.py`` exports ``StackOutputs`` (through each ``DockerMachine``'s ``MachineOutputs``); ``scripts/machine``,
other projects (through a StackReference) and the tests read them back with the same models. The shapes are
documented in docs/outputs.md.
"""

from __future__ import annotations

import os
from typing import Any, NamedTuple

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from components import ownership


class DynamicType(NamedTuple):
    """A Python dynamic resource's type: ``pulumi-python:dynamic/<module>:<name>``."""

    module: str
    name: str

    @property
    def token(self) -> str:
        return f"pulumi-python:dynamic/{self.module}:{self.name}"


# The shared resources' type tokens; each driver declares its own (components/drivers/base.py: VmResource, Firewall).
COMPONENT = "dockermachine:index:DockerMachine"
SWARM_COMPONENT = "dockermachine:index:Swarm"
REMOTE_COMMAND = DynamicType("remote", "Command")
HOST_KEY_SCAN = DynamicType("remote", "HostKeyScan")
API_CHECK = DynamicType("docker", "ApiCheck")
DOCKER_CONTEXT = DynamicType("docker", "Context")
CERTIFICATE_AUTHORITY = DynamicType("tls", "CertificateAuthority")
SERVER_CERTIFICATE = DynamicType("tls", "ServerCertificate")
SSH_KEY = DynamicType("tls", "SshKey")


class _Model(BaseModel):
    # camelCase on the wire (stack outputs are read by other languages' projects too); extra keys are tolerated so an
    # older CLI can read a newer stack.
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True)


class SshEndpoint(_Model):
    host: str = ""
    port: int = 22
    user: str = "root"
    # The host's SSH public key (OpenSSH line) every dial pins: scripts/machine ssh/scp check it too.
    host_key: str = ""


class MachineOutputs(_Model):
    """``machines.<name>``: one machine, as docker-machine's ``inspect``/``env`` need it."""

    name: str
    driver: str
    ip: str = ""
    port: int = 0
    url: str = ""
    # docker-machine env's four variables.
    env: dict[str, str] = {}
    ssh: SshEndpoint = SshEndpoint()
    docker_version: str = ""
    server_cert_serial: str = ""
    # What the server certificate names: the address the client dials, localhost and tls_san; and its end (ISO).
    server_cert_sans: list[str] = []
    server_cert_expires: str = ""
    # Driver facts (e.g. a local VM's instance directory, where its port forwarder reports conflicts).
    details: dict[str, Any] = {}
    # Where the stack's other machines reach this one (a swarm's advertise address); None if the driver has none.
    private_ip: str | None = None

    @property
    def docker_host(self) -> tuple[str, int]:
        host, _, port = self.url.removeprefix("tcp://").rpartition(":")
        return host.strip("[]"), int(port or 0)


class SwarmOutputs(_Model):
    """``swarm``: the stack's swarm-mode cluster (its join tokens are the secret ``swarmJoinTokens``)."""

    managers: list[str] = []
    workers: list[str] = []
    # host:port of the first manager on the swarm's network, what `docker swarm join` dials.
    manager_address: str = ""

    def role(self, machine: str) -> str:
        return "manager" if machine in self.managers else "worker" if machine in self.workers else ""


class StackOutputs(_Model):
    """Every output of a stack of this project. Keys, certificates, SSH keys and join tokens are secrets."""

    ca_cert: str = ""
    client_cert: str = ""
    client_key: str = ""
    machines: dict[str, MachineOutputs] = {}
    ssh_private_keys: dict[str, str] = Field({}, description="per machine, the private key that logs in")
    swarm: SwarmOutputs | None = None
    swarm_join_tokens: dict[str, str] = Field({}, description="worker and manager join tokens")


# The top-level output names, from the model (caCert, clientCert, clientKey, machines, sshPrivateKeys, swarm,
# swarmJoinTokens).
OUTPUT_NAMES = {name: field.alias for name, field in StackOutputs.model_fields.items()}


# --- the client's certificate files (docker-machine's DOCKER_CERT_PATH) ------------------------------------------

CERT_FILES = {"ca.pem": 0o644, "cert.pem": 0o644, "key.pem": 0o600}
# A cert directory of ours from before ownership markers holds just these.
_UNMARKED_OURS = frozenset(CERT_FILES)
CERT_DIRECTORY = "the client certificate directory"


def store_path() -> str:
    """docker-machine's storage path, ``~/.docker/machine``."""
    return os.path.join(os.path.expanduser("~"), ".docker", "machine")


def cert_path(machine_name: str, owner: ownership.Owner) -> str:
    """docker-machine's DOCKER_CERT_PATH for a machine, ``~/.docker/machine/machines/<name>``, unless that directory
    is someone else's (docker-machine's own machine, another stack's): then ``<name>.<stack>`` beside it."""
    primary = os.path.join(store_path(), "machines", machine_name)
    if ownership.state(primary, owner, _UNMARKED_OURS) in ("absent", "ours"):
        return primary
    return os.path.join(store_path(), "machines", f"{machine_name}.{owner.stack}")


def docker_env(machine_name: str, url: str, cert_dir: str) -> dict[str, str]:
    """The variables ``scripts/machine env`` prints, in docker-machine's order."""
    return {
        "DOCKER_TLS_VERIFY": "1",
        "DOCKER_HOST": url,
        "DOCKER_CERT_PATH": cert_dir,
        "DOCKER_MACHINE_NAME": machine_name,
    }


def write_client_certs(directory: str, owner: ownership.Owner, ca_cert: str, client_cert: str,
                       client_key: str) -> None:  # fmt: skip
    """ca.pem, cert.pem and key.pem (0600) in a 0700 directory of ours, each replaced atomically; NotOurs for a
    directory of someone else."""
    ownership.claim(directory, owner, CERT_DIRECTORY, _UNMARKED_OURS)
    contents = {"ca.pem": ca_cert, "cert.pem": client_cert, "key.pem": client_key}
    for filename, mode in CERT_FILES.items():
        path = os.path.join(directory, filename)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode), "w") as f:
            f.write(contents[filename])
        os.chmod(tmp, mode)
        os.replace(tmp, path)


def remove_client_certs(directory: str, owner: ownership.Owner) -> bool:
    """Remove a cert directory of ours (only ours); whether it was."""
    if ownership.state(directory, owner, _UNMARKED_OURS) != "ours":
        return False
    for filename in (*CERT_FILES, ownership.MARKER):
        try:
            os.unlink(os.path.join(directory, filename))
        except FileNotFoundError:
            pass
    try:
        os.rmdir(directory)
    except OSError:
        pass
    return True
