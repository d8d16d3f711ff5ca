"""Run the real Pulumi program under Pulumi's mocks and record every resource it registers."""

from __future__ import annotations

import importlib.util
import json
import os
import threading
from dataclasses import dataclass, field
from typing import Any

import pulumi
import pytest
from pulumi.runtime.mocks import MockMonitor
from pulumi.runtime.stack import run_pulumi_func
from pulumi.runtime.sync_await import _sync_await

from tests.fakes.docker import DockerServer, make_pki

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@dataclass
class Registered:
    typ: str
    name: str
    inputs: dict[str, Any]
    urn_parent: str | None
    options: Any = None
    # Captured from the engine request (see RecordingMonitor); empty when not available.
    urn: str = ""
    dependencies: list[str] = field(default_factory=list)
    property_dependencies: dict[str, list[str]] = field(default_factory=dict)
    provider: str | None = None
    resource_id: str | None = None
    additional_secret_outputs: list[str] = field(default_factory=list)
    ignore_changes: list[str] = field(default_factory=list)


@dataclass
class Called:
    """One provider function call (an invoke such as ``aws:ec2/getAmi:getAmi``) with its wire arguments."""

    token: str
    args: dict[str, Any]


@dataclass
class Program:
    resources: list[Registered] = field(default_factory=list)
    outputs: dict[str, Any] = field(default_factory=dict)
    calls: list[Called] = field(default_factory=list)

    def called(self, token: str) -> list[Called]:
        return [c for c in self.calls if c.token == token]

    def of_type(self, suffix: str) -> list[Registered]:
        return [r for r in self.resources if r.typ.endswith(suffix)]

    def named(self, name: str) -> Registered:
        (found,) = [r for r in self.resources if r.name == name]
        return found

    def by_urn(self, urn: str) -> Registered:
        (found,) = [r for r in self.resources if r.urn == urn]
        return found


class RecordingMonitor(MockMonitor):
    """A MockMonitor that hands the raw RegisterResource request (parent, dependencies…) to the mocks.

    MockResourceArgs carries no parent nor depends_on; the request is kept per thread while the
    mock's ``new_resource`` runs (the SDK calls the monitor from executor threads).
    """

    def __init__(self, mocks: RecordingMocks):
        super().__init__(mocks)
        self.local = threading.local()
        mocks.monitor = self

    def RegisterResource(self, request):  # noqa: N802 - gRPC method name
        self.local.request = request
        try:
            return super().RegisterResource(request)
        finally:
            self.local.request = None


class RecordingMocks(pulumi.runtime.Mocks):
    def __init__(
        self,
        program: Program,
        overrides: dict[str, dict[str, Any]] | None = None,
        calls: dict[str, Any] | None = None,
        ids: dict[str, str] | None = None,
    ):
        self.program = program
        self.overrides = overrides or {}
        self.calls = calls or {}
        self.ids = ids or {}
        self.monitor: RecordingMonitor | None = None

    def new_resource(self, args: pulumi.runtime.MockResourceArgs):
        request = getattr(self.monitor.local, "request", None) if self.monitor else None
        registered = Registered(args.typ, args.name, dict(args.inputs), None)
        registered.provider = args.provider or None
        registered.resource_id = args.resource_id or None
        if request is not None:
            registered.urn = self.monitor.make_urn(request.parent, request.type, request.name)
            registered.urn_parent = request.parent or None
            registered.dependencies = list(request.dependencies)
            registered.property_dependencies = {k: list(v.urns) for k, v in request.propertyDependencies.items()}
            registered.additional_secret_outputs = list(request.additionalSecretOutputs)
            registered.ignore_changes = list(request.ignoreChanges)
        self.program.resources.append(registered)
        outs = dict(args.inputs)
        if args.typ.endswith("dynamic/qemu:Vm"):
            outs.update(ip="127.0.0.1", ssh_host="127.0.0.1", ssh_port=40022, engine_host_port=42376, state="running")
        if args.typ.endswith("dynamic/tls:SshKey"):
            outs.update(private_key="PRIVATE", public_key="ssh-ed25519 AAAA test")
        if args.typ.endswith("dynamic/tls:CertificateAuthority"):
            outs.update(ca_cert="CA", ca_key="CAKEY", client_cert="CLIENT", client_key="CLIENTKEY")
        if args.typ.endswith("dynamic/tls:ServerCertificate"):
            outs.update(cert="SERVER", key="SERVERKEY", serial="abc123")
        if args.typ.endswith("dynamic/docker:ApiCheck"):
            outs.update(server_version="20.10.24")
        for suffix, values in self.overrides.items():
            if args.typ.endswith(suffix):
                outs.update(values)
        resource_id = next((i for suffix, i in self.ids.items() if args.typ.endswith(suffix)), f"{args.name}-id")
        return (resource_id if args.custom else None, outs)

    def call(self, args: pulumi.runtime.MockCallArgs):
        self.program.calls.append(Called(args.token, dict(args.args)))
        result = self.calls.get(args.token, {})
        return result(dict(args.args)) if callable(result) else result


def run_program(
    machines: Any,
    stack: str = "unit",
    preview: bool = False,
    *,
    program: Program | None = None,
    overrides: dict[str, dict[str, Any]] | None = None,
    calls: dict[str, Any] | None = None,
    ids: dict[str, str] | None = None,
    config: dict[str, Any] | None = None,
) -> Program:
    """Execute __main__.py with `docker-machine:machines` set to ``machines``; return what it registered.

    Stack outputs are resolved to plain values (secrets unwrapped) in ``Program.outputs``.
    ``program``: record into this object (lets a caller inspect what was registered when the run raises).
    ``overrides``: {type-token suffix: outputs} merged over the default mock outputs of that type.
    ``calls``: {function token: result} for provider function calls (invokes), recorded in ``Program.calls``;
    a result may be a callable taking the call's arguments, and may return ``(outputs, [(property, reason)])``
    to make the call fail. Unlisted calls return ``{}``.
    ``ids``: {type-token suffix: id} for resources whose id must look real (default ``<name>-id``).
    ``config``: other ``docker-machine:`` keys (e.g. ``swarm``), JSON-encoded as Pulumi hands them over.
    """
    program = Program() if program is None else program
    mocks = RecordingMocks(program, overrides, calls, ids)
    pulumi.runtime.set_mocks(
        mocks, project="docker-machine", stack=stack, preview=preview, monitor=RecordingMonitor(mocks)
    )
    extra = {f"docker-machine:{key}": json.dumps(value) for key, value in (config or {}).items()}
    pulumi.runtime.set_all_config({"docker-machine:machines": json.dumps(machines), **extra})

    def execute():
        spec = importlib.util.spec_from_file_location("program_under_test", os.path.join(ROOT, "__main__.py"))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)

    settings = pulumi.runtime.settings.SETTINGS
    settings.rpc_manager.clear()
    settings.outputs.clear()
    # The mocks keep one root stack resource across runs: drop what an earlier run exported.
    root = pulumi.runtime.settings.get_root_resource()
    if root is not None and hasattr(root, "outputs"):
        root.outputs = {}
    _sync_await(run_pulumi_func(execute))
    stack_resource = pulumi.runtime.settings.get_root_resource()
    exported = getattr(stack_resource, "outputs", {}) if stack_resource else {}
    program.outputs = {k: _sync_await(pulumi.Output.from_input(v).future()) for k, v in exported.items()}
    return program


@pytest.fixture
def program_runner():
    return run_program


@pytest.fixture(autouse=True, scope="session")
def cloud_plugins(tmp_path_factory):
    """A PULUMI_HOME holding (empty) plugins at the versions the cloud SDKs pin: the drivers' preflight finds them.

    The plugins never run: the program runs under mocks. tests/unit/test_plugins.py covers a missing plugin.
    """
    from components.drivers import base

    home = tmp_path_factory.mktemp("pulumi-home")
    for package in ("pulumi_aws", "pulumi_azure_native", "pulumi_digitalocean"):
        name, version = base.plugin_of(package)
        directory = home / "plugins" / f"resource-{name}-v{version}"
        directory.mkdir(parents=True)
        (directory / f"pulumi-resource-{name}").write_text("#!/bin/sh\nexit 1\n")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PULUMI_HOME", str(home))
        yield home


@pytest.fixture(scope="module")
def pki():
    """A CA with a client and a server certificate (127.0.0.1, localhost)."""
    return make_pki()


@pytest.fixture(scope="module")
def docker(pki):
    """A Docker API over mutual TLS from ``pki``, on 127.0.0.1."""
    server = DockerServer(pki)
    yield server
    server.close()
