"""Helpers shared by the cloud driver tests (test_driver_aws.py, test_driver_azure.py, test_driver_digitalocean.py).

Every test there runs one machine named ``web`` under Pulumi mocks; the stack's own SSH key is mocked to the
``STACK_*`` values below.
"""

from __future__ import annotations

import contextlib
import email
import os
from collections.abc import Iterable, Iterator
from typing import Any

import pulumi
import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from components import config
from components.config import ConfigError
from tests.unit.conftest import ROOT, Program, run_program
from tests.unit.test_graph import SECRET_SIG, plain  # noqa: F401 - the drivers' tests use them from here

# The SDKs warn about their own deprecated resources when they are imported.
SDK_DEPRECATIONS = pytest.mark.filterwarnings("ignore:.*has been deprecated in favor of:DeprecationWarning")

STACK_PUBLIC = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIStackKey"
STACK_PRIVATE = "-----BEGIN OPENSSH PRIVATE KEY-----\nSTACK\n-----END OPENSSH PRIVATE KEY-----\n"
# The mocked outputs of the stack's SSH key, for ``run_program(overrides=...)``.
STACK_KEY_OVERRIDE = {"dynamic/tls:SshKey": {"public_key": STACK_PUBLIC, "private_key": STACK_PRIVATE}}


def machine_spec(driver: str, options: dict | None = None, engine: dict | None = None, **machine: Any) -> dict:
    """The stack config of the machine ``web``."""
    spec = {"name": "web", "driver": driver, "options": options or {}, **machine}
    if engine:
        spec["engine"] = engine
    return spec


@contextlib.contextmanager
def own_state(tmp_path_factory: pytest.TempPathFactory, unset: Iterable[str] = ()) -> Iterator[None]:
    """For module-scoped fixtures (no ``monkeypatch``): a fresh DMP_STATE, and the ``unset`` variables removed."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DMP_STATE", str(tmp_path_factory.mktemp("state")))
        for var in unset:
            mp.delenv(var, raising=False)
        yield


def default_program(run: Any):
    """A module-scoped fixture: the program with the driver's defaults, in its own state directory."""

    @pytest.fixture(scope="module")
    def default(tmp_path_factory) -> Program:
        with own_state(tmp_path_factory):
            return run()

    return default


def one(program: Program, typ: str):
    (found,) = program.of_type(typ)
    return found


def cloud_resources(program: Program, provider: str) -> list[tuple[str, str]]:
    """(type, name) of the provider's resources, sorted; asserts that each is a child of the machine's component."""
    found = [r for r in program.resources if r.typ.startswith(f"{provider}:")]
    component = program.named("web")
    for r in found:
        assert r.urn_parent == component.urn, r.name
    return sorted((r.typ, r.name) for r in found)


def connection(program: Program) -> dict:
    return plain(program.named("web-wait-for-ssh").inputs["connection"])


def config_error(driver: str, options: dict) -> str:
    """The ConfigError the machine ``web`` with these options gets."""
    with pytest.raises(ConfigError) as info:
        config.parse([{"name": "web", "driver": driver, "options": options}])
    return str(info.value)


def write_key(path, kind: str = "ed25519", passphrase: bytes | None = None) -> tuple[str, str]:
    """A new private key file (ed25519 as OpenSSH, rsa as PEM): (its text, its public key line)."""
    key = ed25519.Ed25519PrivateKey.generate() if kind == "ed25519" else rsa.generate_private_key(65537, 2048)
    encryption = (
        serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption()
    )
    fmt = serialization.PrivateFormat.OpenSSH if kind == "ed25519" else serialization.PrivateFormat.TraditionalOpenSSL
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, fmt, encryption))
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return path.read_text(), public.decode()


def failed_run(spec: dict, match: str, error: type[Exception] = pulumi.RunError, **kwargs: Any) -> Program:
    """What a program of the one machine ``spec`` registered before failing, as it must, with ``error``."""
    recorded = Program()
    with pytest.raises(error, match=match):
        run_program([spec], program=recorded, **kwargs)
    return recorded


def example_options(driver: str) -> Any:
    """The options of the one machine in ``stacks/Pulumi.<driver>.yaml``, after asserting that it uses ``driver``
    and that no credentials sit in the stack file in plain text."""
    with open(os.path.join(ROOT, "stacks", f"Pulumi.{driver}.yaml")) as stack_file:
        stack = yaml.safe_load(stack_file)["config"]
    (machine,) = config.parse(stack["docker-machine:machines"]).machines
    assert machine.driver == driver
    assert not any("secret" in key.lower() or "token" in key.lower() for key in stack)
    return machine.options


def user_data_parts(user_data: Any) -> list[str]:
    """The parts of a VM's user-data (a secret: it holds the host key): one cloud-config, or a multipart message."""
    text = plain(user_data)
    if not text.startswith("Content-Type: multipart/"):
        return [text]
    message = email.message_from_string(text)
    return [part.get_payload() for part in message.get_payload()]


def host_key_installed(user_data: Any) -> str:
    """The SSH host key (public line) our cloud-config part installs; asserts it is the only key sshd gets."""
    ours = yaml.safe_load(user_data_parts(user_data)[0])
    assert ours["ssh_deletekeys"] is True and ours["ssh_genkeytypes"] == []
    assert ours["ssh_keys"]["ed25519_private"].startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    return ours["ssh_keys"]["ed25519_public"]
