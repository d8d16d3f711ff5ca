"""Adding a driver is adding its file, adding an engine option is the model (and provisioning): a throwaway cloud driver
written to a temporary module, and a throwaway engine option, reach the outputs, the preview and the policy pack, the
CLI's flags and docker-machine's host record with no other edit."""

from __future__ import annotations

import sys
import textwrap

import pytest

from components import drivers, model
from components.model import EngineField, EngineOptions, engine
from components.steps import provisioning
from scripts.machinecli import changes, formats, lifecycle
from tests.unit.conftest import run_program
from tests.unit.test_policy import stack_of, stack_violations, violations

# One file, as docs/drivers.md says a new driver is: options, what it declares, what it registers.
FAKECLOUD = textwrap.dedent('''
    """A cloud that exists only in this test."""

    from __future__ import annotations

    import pulumi
    from pydantic import Field

    from components.drivers._cloud import AllowedCidrs, cloud_host, ports
    from components.drivers.base import BaseDriver, DriverContext, Firewall, Host, IngressRule, VmResource
    from components.sshkeys import OwnKey, login_key


    class Options(OwnKey):
        plan: str = Field("small", pattern=r"^[a-z]+$")
        allowed_cidrs: AllowedCidrs = AllowedCidrs()


    def rules_of(inputs):
        return [IngressRule(r["proto"], ports(r["port"]), tuple(r["from"])) for r in inputs.get("allow") or []]


    class Machine(pulumi.CustomResource):
        def __init__(self, name, props, opts):
            super().__init__("fakecloud:index:Machine", name, {**props, "machineId": None, "publicIp": None}, opts)


    class Wall(pulumi.CustomResource):
        def __init__(self, name, props, opts):
            super().__init__("fakecloud:index:Wall", name, props, opts)


    class FakeCloudDriver(
        BaseDriver, name="fakecloud", options=Options,
        vm=VmResource("fakecloud:index:Machine", identity_output="machineId", size_path=("plan",), size_option="plan"),
        firewall=Firewall("fakecloud:index:Wall", rules_of),
    ):
        def create_host(self, ctx: DriverContext) -> Host:
            o: Options = ctx.options
            private_key, public_key = login_key(o, ctx.ssh_key)
            machine = Machine(f"{ctx.name}-machine", {"plan": o.plan, "sshKey": public_key}, ctx.opts)
            allow = [{"proto": "tcp", "port": "22", "from": o.allowed_cidrs.ssh},
                     {"proto": "tcp", "port": str(ctx.machine.engine.port), "from": o.allowed_cidrs.engine}]
            wall = Wall(f"{ctx.name}-wall", {"allow": allow, "machine": machine.id}, ctx.opts)
            return cloud_host(ctx, machine.publicIp, 22, "root", private_key, wall, machine.publicIp)


    DRIVER = FakeCloudDriver()
''')


@pytest.fixture
def fakecloud(tmp_path, monkeypatch):
    """The driver file in a directory of the registry's search path, and nothing else changed."""
    (tmp_path / "fakecloud.py").write_text(FAKECLOUD)
    monkeypatch.setattr(drivers, "__path__", [*drivers.__path__, str(tmp_path)])
    drivers.available.cache_clear()
    yield drivers.load("fakecloud")
    sys.modules.pop("components.drivers.fakecloud", None)
    drivers.available.cache_clear()


def test_the_registry_finds_the_new_driver_and_what_it_declares(fakecloud):
    assert "fakecloud" in drivers.available()
    assert "fakecloud:index:Machine" in drivers.vm_types() and "fakecloud:index:Wall" in drivers.firewall_types()


def test_its_machine_reaches_the_stack_outputs(fakecloud, monkeypatch, tmp_path):
    monkeypatch.setenv("DMP_STATE", str(tmp_path / "state"))
    program = run_program([{"name": "far", "driver": "fakecloud", "options": {"plan": "large"}}],
                          overrides={"fakecloud:index:Machine": {"publicIp": "203.0.113.9", "machineId": "m-1"}})
    far = program.outputs["machines"]["far"]
    assert (far["driver"], far["ip"], far["url"]) == ("fakecloud", "203.0.113.9", "tcp://203.0.113.9:2376")
    assert program.named("far-wait-for-ssh").dependencies  # provisioning waits for the driver's resources


def _step(op: str, typ: str, name: str, old: dict | None, new: dict | None, **extra) -> dict:
    urn = f"urn:pulumi:unit::docker-machine::dockermachine:index:DockerMachine${typ}::{name}"
    parent = "urn:pulumi:unit::docker-machine::dockermachine:index:DockerMachine::far"
    state = lambda inputs: {"type": typ, "parent": parent, "inputs": inputs} if inputs is not None else None  # noqa: E731
    return {"op": op, "urn": urn, "oldState": state(old), "newState": state(new), **extra}


def test_the_preview_reads_its_machine_and_its_firewall(fakecloud):
    wide = [{"proto": "tcp", "port": "2376", "from": ["0.0.0.0/0"]}]
    narrow = [{"proto": "tcp", "port": "2376", "from": ["192.0.2.0/24"]}]
    document = {"steps": [
        _step("replace", "fakecloud:index:Machine", "far-machine", {"plan": "small"}, {"plan": "large"},
              replaceReasons=["plan"]),
        _step("update", "fakecloud:index:Wall", "far-wall", {"allow": narrow}, {"allow": wide}),
    ]}  # fmt: skip
    report = changes.build(document, [], "unit", [], False)
    (far,) = report.machines
    assert far.action == "replace"
    texts = [c.text for c in far.consequences]
    assert "VM replaced (plan changed): containers and volumes on it are lost" in texts
    assert "ingress widened: 0.0.0.0/0 on 2376/tcp" in texts


def test_the_policy_pack_checks_its_size_firewall_and_replacement(fakecloud, monkeypatch, tmp_path):
    monkeypatch.setenv("DMP_STATE", str(tmp_path / "state"))
    machines = [{"name": "far", "driver": "fakecloud", "options": {"plan": "large"}}]
    program = run_program(machines, overrides={"fakecloud:index:Machine": {"publicIp": "203.0.113.9"}})
    stack = stack_of(machines, {"instance_sizes": ["small"]})
    machine, wall = program.named("far-machine"), program.named("far-wall")
    ((_, size),) = violations(stack, "instance-size", [machine])
    assert "size large is not allowed" in size and "machines[far].options.plan" in size
    ((_, engine_port),) = violations(stack, "engine-ingress-anywhere", [wall])
    assert "lets the Docker engine port 2376 in from anywhere" in engine_port
    stack.previous = lambda: {machine.urn: {"type": machine.typ, "outputs": {"machineId": "m-1"}}}
    ((_, replaced),) = stack_violations(stack, "vm-replaced", program)
    assert "machine far: its VM far-machine is replaced" in replaced


class WithDownloads(EngineOptions):
    """A throwaway engine option: a field with the dockerd flag it becomes, nothing else."""

    max_concurrent_downloads: int | None = engine(None, EngineField("max-concurrent-downloads"), ge=1)


def test_a_new_engine_option_reaches_dockerd_the_cli_the_host_record_and_the_preview(monkeypatch):
    monkeypatch.setattr(model, "EngineOptions", WithDownloads)
    options = WithDownloads(max_concurrent_downloads=5)
    # provisioning: the dockerd flag
    assert '--max-concurrent-downloads "5"' in provisioning.daemon_flags(options, "qemu")
    # the CLI: `create --engine-max-concurrent-downloads 5`
    flags = lifecycle.parse_flags("qemu", ["--engine-max-concurrent-downloads", "5", "--engine-label", "a=b"])
    assert flags["engine"] == {"max_concurrent_downloads": 5, "labels": ["a=b"]}
    # inspect: docker-machine's EngineOptions record, the new option after docker-machine's own keys
    record = formats.engine_record(options)
    assert list(record)[-1] == "MaxConcurrentDownloads" and record["MaxConcurrentDownloads"] == 5
    assert list(record)[:2] == ["ArbitraryFlags", "Dns"]
    # the preview: a daemon restart names the option in words
    before = provisioning.daemon_script(WithDownloads(), "qemu", "s")
    after = provisioning.daemon_script(options, "qemu", "s")
    assert changes._daemon_reason(before, after, False) == "max concurrent downloads changed"
