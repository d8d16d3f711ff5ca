"""The policy pack (policy/, docs/policy.md): every rule against what the program really registers.

Resources come from the program under Pulumi mocks (the local QEMU driver and the three cloud drivers, with the
drivers' own test doubles) and reach the rules the way the engine hands them to a pack: serialized, through
pulumi-policy's own deserializer and unknown-value guard. Where a real ``pulumi preview`` of a new stack leaves a value
unknown (seen with a probe pack on a real local stack: docs/policy.md), the tests make it unknown too.
"""

from __future__ import annotations

import functools
import json
import os
from typing import Any

import pytest
from pulumi.runtime.rpc import UNKNOWN
from pulumi_policy import (
    EnforcementLevel,
    PolicyCustomTimeouts,
    PolicyResource,
    PolicyResourceOptions,
    ResourceValidationArgs,
    StackValidationArgs,
)
from pulumi_policy.deserialize import deserialize_properties
from pulumi_policy.policy import _NotApplicableError
from pulumi_policy.proxy import UnknownValueError, unknown_checking_proxy

from components import dockerd, drivers, outputs, policy_settings
from components.drivers.qemu.vm import VM as QEMU_VM
from components.model import EngineOptions
from components.steps import provisioning
from policy import rules
from tests.unit import test_driver_aws, test_driver_azure, test_driver_digitalocean, test_graph
from tests.unit.conftest import Program, Registered

pytestmark = pytest.mark.filterwarnings("ignore:.*has been deprecated in favor of:DeprecationWarning")

STACK_URN = "urn:pulumi:unit::docker-machine::pulumi:pulumi:Stack::docker-machine-unit"
AWS_INSTANCE, AZURE_VM, DO_DROPLET = (drivers.load(name).vm.type for name in ("aws", "azure", "digitalocean"))
AWS_SECURITY_GROUP, AZURE_NSG, DO_FIREWALL = (
    drivers.load(name).firewall.type for name in ("aws", "azure", "digitalocean")
)


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("DMP_STATE", str(tmp_path / "state"))
    for var in ("AWS_REGION", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(var, raising=False)


# --- the engine's view ---------------------------------------------------------------------------------------------


def analyzed(props: dict[str, Any], unknown: tuple[str, ...] = ()) -> Any:
    """Properties as a pack sees them: the wire form (secrets unwrapped) behind pulumi-policy's unknown guard."""
    wire = {**json.loads(json.dumps(props)), **dict.fromkeys(unknown, UNKNOWN)}
    return unknown_checking_proxy(deserialize_properties(wire))


def stack_of(machines: list[dict], settings: Any = None, **env: str) -> rules.Stack:
    """The pack's view of a stack with these machines and docker-machine:policy settings, from its environment."""
    config = {"docker-machine:machines": json.dumps(machines)}
    if settings is not None:
        config[policy_settings.KEY] = json.dumps(settings)
    return rules.Stack.from_env({"PULUMI_CONFIG": json.dumps(config), "PULUMI_STACK": "unit", **env})


def policy(stack: rules.Stack, name: str):
    (found,) = [p for p in rules.policies(stack) if p.name == name]
    return found


def violations(stack: rules.Stack, name: str, resources: list[Registered], unknown: dict[str, tuple] | None = None):
    """(resource name, message) of each violation the resource rule ``name`` reports."""
    found: list[tuple[str, str]] = []
    for r in resources:
        opts = PolicyResourceOptions(False, [], None, [], PolicyCustomTimeouts(0, 0, 0), [], r.urn_parent)
        props = analyzed(r.inputs, (unknown or {}).get(r.name, ()))
        args = ResourceValidationArgs(r.typ, props, r.urn, r.name, opts, None)
        policy(stack, name).validate(args, lambda message, _urn=None, at=r.name: found.append((at, message)))
    return found


def stack_violations(stack: rules.Stack, name: str, program: Program, props: dict[str, dict] | None = None):
    """(URN, message) of each violation the stack rule ``name`` reports; ``props``: a resource's planned outputs
    by name (default: its inputs)."""
    by_urn = {}
    for r in program.resources:
        opts = PolicyResourceOptions(False, [], None, [], PolicyCustomTimeouts(0, 0, 0), [], r.urn_parent)
        planned = analyzed((props or {}).get(r.name, r.inputs))
        by_urn[r.urn] = PolicyResource(r.typ, planned, r.urn, r.name, opts, None, None, [], {})
    for r in program.resources:
        by_urn[r.urn].parent = by_urn.get(r.urn_parent)
    found: list[tuple[str, str]] = []
    args = StackValidationArgs(list(by_urn.values()))
    policy(stack, name).validate(args, lambda message, urn=None: found.append((urn, message)))
    return found


def qemu(name: str = "pm", **machine: Any) -> tuple[list[dict], Program]:
    machines = [{"name": name, "driver": "qemu", **machine}]
    return machines, test_graph.run(machines)


def step(program: Program, stage: str) -> list[Registered]:
    return [r for r in program.resources if r.typ == outputs.REMOTE_COMMAND.token and r.inputs["step"] == stage]


def with_stdin(resource: Registered, script: str) -> Registered:
    return Registered(resource.typ, resource.name, {**resource.inputs, "stdin": script}, resource.urn_parent,
                      urn=resource.urn)  # fmt: skip


# --- daemon-tls ----------------------------------------------------------------------------------------------------

# Labels, registries and opts that look like listeners or TLS switches: they stay values (systemd quotes them).
SNEAKY = {
    "labels": ['x=1" -H tcp://0.0.0.0:2375 --tlsverify=false "', "y=--tlscacert=/tmp/ca.pem"],
    "insecure_registries": ["10.0.0.0/8"],
    "opts": ["log-level=debug", "debug"],
}


@pytest.mark.parametrize("engine", [{}, {"port": 3376}, SNEAKY], ids=["default", "port", "sneaky-values"])
def test_daemon_tls_passes_what_the_program_sends(engine):
    machines, program = qemu(engine=engine)
    assert violations(stack_of(machines), "daemon-tls", step(program, "daemon-config")) == []


WEAKENING_OPTS = ["host=tcp://0.0.0.0:2375", "tls=false", "tlsverify=false", "tlscacert=/tmp/ca.pem",
                  "tlscert=/tmp/c.pem", "tlskey=/tmp/k.pem", "config-file=/tmp/daemon.json"]  # fmt: skip


@pytest.mark.parametrize("flag", WEAKENING_OPTS)
def test_the_config_model_lets_no_engine_opt_weaken_tls(flag):
    with pytest.raises(ValueError, match="cannot be set through engine.opts"):
        EngineOptions(opts=[flag])


@pytest.mark.parametrize(
    ("edit", "missing"),
    [
        (lambda s: s.replace(" --tlsverify ", " "), "--tlsverify"),
        (lambda s: s.replace("--tlscacert /etc/docker/ca.pem", "--tlscacert /tmp/other-ca.pem"),
         "--tlscacert=/etc/docker/ca.pem"),
        (lambda s: s.replace("--tlskey /etc/docker/server-key.pem ", ""), "--tlskey=/etc/docker/server-key.pem"),
        (lambda s: s.replace(" --label", " --tlsverify=false --label", 1), "--tlsverify"),
        (lambda s: s.replace("-H fd://", "-H fd:// -H 0.0.0.0:2375").replace(" --tlsverify ", " "), "--tlsverify"),
    ],
    ids=["no-tlsverify", "other-ca", "no-key", "verify-turned-off", "listener-without-scheme"],
)  # fmt: skip
def test_daemon_tls_names_the_machine_and_what_is_missing(edit, missing):
    machines, program = qemu()
    (daemon,) = step(program, "daemon-config")
    edited = with_stdin(daemon, edit(daemon.inputs["stdin"]))
    ((name, message),) = violations(stack_of(machines), "daemon-tls", [edited])
    assert name == "pm-daemon-config"
    assert message.startswith("machine pm: dockerd listens on ")
    assert missing in message and "(in the daemon-config script)" in message


def test_daemon_tls_without_a_tcp_listener_passes():
    machines, program = qemu()
    (daemon,) = step(program, "daemon-config")
    local_only = daemon.inputs["stdin"].replace("-H tcp://0.0.0.0:2376 ", "").replace(" --tlsverify ", " ")
    assert violations(stack_of(machines), "daemon-tls", [with_stdin(daemon, local_only)]) == []


def test_daemon_tls_reports_a_command_line_it_cannot_read():
    machines, program = qemu()
    (daemon,) = step(program, "daemon-config")
    broken = daemon.inputs["stdin"].replace('--storage-driver "overlay2"', '--storage-driver "overlay2" --frobnicate')
    ((_, message),) = violations(stack_of(machines), "daemon-tls", [with_stdin(daemon, broken)])
    assert "machine pm: dockerd's command line cannot be checked (--frobnicate is not a dockerd flag)" in message


# A real preview of a new machine: the daemon script embeds the server certificate's serial, not known yet.
PREVIEW_UNKNOWN = {"pm-daemon-config": ("stdin", "connection"), "pm-tls": ("stdin", "connection")}


def test_daemon_tls_at_preview_checks_the_drop_in_built_from_the_machine_settings(monkeypatch):
    machines, program = qemu()
    stack = stack_of(machines)
    daemon = step(program, "daemon-config")
    assert violations(stack, "daemon-tls", daemon, PREVIEW_UNKNOWN) == []
    # a provisioning bug shows at preview already
    weakened = provisioning.daemon_flags
    monkeypatch.setattr(provisioning, "daemon_flags", lambda e, d: [f for f in weakened(e, d) if f != "--tlsverify"])
    ((_, message),) = violations(stack, "daemon-tls", daemon, PREVIEW_UNKNOWN)
    assert "without --tlsverify (from the machine's settings)" in message


def test_daemon_tls_at_preview_of_an_unknown_machine_says_it_cannot_run():
    _, program = qemu()
    # pulumi-policy turns this into an advisory "can't run policy 'daemon-tls' during preview"
    with pytest.raises(UnknownValueError):
        violations(stack_of([]), "daemon-tls", step(program, "daemon-config"), PREVIEW_UNKNOWN)


# --- install-url-https, insecure-registries ------------------------------------------------------------------------


def test_install_url_https():
    url = "http://get.docker.example.test/install.sh"
    machines, program = qemu(engine={"install": "script", "install_url": url})
    ((name, message),) = violations(stack_of(machines), "install-url-https", step(program, "install-docker"))
    assert name == "pm-install-docker"
    assert f"machine pm: Docker's install script would be downloaded from {url} without TLS" in message
    assert "set machines[pm].engine.install_url to an https:// URL" in message
    for engine in ({"install": "script"}, {"install": "packages"}, {"install": "none"}):
        machines, program = qemu(engine=engine)
        assert violations(stack_of(machines), "install-url-https", step(program, "install-docker")) == []


@pytest.mark.parametrize("unknown", [{}, PREVIEW_UNKNOWN], ids=["sent", "preview"])
def test_insecure_registries_only_on_production_stacks(unknown):
    machines, program = qemu(engine={"insecure_registries": ["10.0.0.0/8", "registry.local:5000"]})
    daemon = step(program, "daemon-config")
    ((_, message),) = violations(stack_of(machines, {"production": True}), "insecure-registries", daemon, unknown)
    assert "machine pm: dockerd trusts 10.0.0.0/8, registry.local:5000 without TLS verification" in message
    assert "remove machines[pm].engine.insecure_registries" in message
    assert violations(stack_of(machines, {"production": False}), "insecure-registries", daemon, unknown) == []
    clean, program = qemu()
    daemon = step(program, "daemon-config")
    assert violations(stack_of(clean, {"production": True}), "insecure-registries", daemon) == []


# --- cloud: ingress and sizes --------------------------------------------------------------------------------------

NARROW = {"ssh": ["203.0.113.7/32"], "engine": ["203.0.113.7/32"], "open_ports": ["203.0.113.0/24"]}
OPEN_PORTS_ANYWHERE = {**NARROW, "open_ports": ["0.0.0.0/0"]}
CLOUDS = {
    "aws": (test_driver_aws.run, AWS_SECURITY_GROUP, "instance_type", "t3.small"),
    "azure": (test_driver_azure.run, AZURE_NSG, "size", "Standard_B2s"),
    "digitalocean": (test_driver_digitalocean.run, DO_FIREWALL, "size", "s-1vcpu-1gb"),
}


def cloud(driver: str, options: dict | None = None, **machine: Any) -> tuple[list[dict], Program]:
    spec = {"name": "web", "driver": driver, "options": options or {}, **machine}
    return [spec], _cloud_program(driver, json.dumps(options), json.dumps(machine))


@functools.cache
def _cloud_program(driver: str, options: str, machine: str) -> Program:
    """Each cloud program once (the SDKs make them the slow part); the rules only read what it registered."""
    return CLOUDS[driver][0](json.loads(options), **json.loads(machine))


@pytest.mark.parametrize("driver", CLOUDS)
def test_ssh_open_to_anywhere_is_refused_on_production_stacks(driver):
    machines, program = cloud(driver)  # the drivers' default: docker-machine's 0.0.0.0/0
    firewall = [r for r in program.resources if r.typ == CLOUDS[driver][1]]
    ((name, message),) = violations(stack_of(machines, {"production": True}), "ssh-ingress-anywhere", program.resources)
    assert name == firewall[0].name
    assert f"machine web: {name} lets SSH (port 22) in from anywhere (0.0.0.0/0) on a production stack" in message
    assert "set machines[web].options.allowed_cidrs.ssh to the networks that need it" in message
    assert violations(stack_of(machines), "ssh-ingress-anywhere", program.resources) == []
    machines, program = cloud(driver, {"allowed_cidrs": NARROW})
    assert violations(stack_of(machines, {"production": True}), "ssh-ingress-anywhere", program.resources) == []


@pytest.mark.parametrize(
    ("driver", "options", "shown"),
    [
        ("aws", {"allowed_cidrs": {**NARROW, "ssh": ["::/0"]}}, "port 22) in from anywhere (::/0)"),
        ("aws", {"allowed_cidrs": OPEN_PORTS_ANYWHERE, "open_ports": [22], "ssh_port": 2222}, "port 22)"),
        ("digitalocean", {"ssh_port": 2222}, "port 2222)"),
        ("azure", {"allowed_cidrs": OPEN_PORTS_ANYWHERE, "open_ports": ["22/*"]}, "port 22)"),
    ],
    ids=["ipv6", "open-port-22", "custom-ssh-port", "azure-any-protocol"],
)
def test_ssh_ingress_finds_every_way_in(driver, options, shown):
    machines, program = cloud(driver, options)
    ((_, message),) = violations(stack_of(machines, {"production": True}), "ssh-ingress-anywhere", program.resources)
    assert shown in message


@pytest.mark.parametrize("driver", CLOUDS)
def test_engine_port_open_to_anywhere_is_advised_against(driver):
    machines, program = cloud(driver, engine={"port": 3376})
    ((_, message),) = violations(stack_of(machines), "engine-ingress-anywhere", program.resources)
    assert "lets the Docker engine port 3376 in from anywhere (0.0.0.0/0)" in message
    assert "set machines[web].options.allowed_cidrs.engine" in message
    machines, program = cloud(driver, {"allowed_cidrs": NARROW}, engine={"port": 3376})
    assert violations(stack_of(machines), "engine-ingress-anywhere", program.resources) == []


@pytest.mark.parametrize("driver", CLOUDS)
def test_instance_size_within_the_allowlist(driver):
    _, _, option, default = CLOUDS[driver]
    machines, program = cloud(driver)
    allowed = {"instance_sizes": [default, "t3.medium"]}
    assert violations(stack_of(machines, allowed), "instance-size", program.resources) == []
    assert violations(stack_of(machines), "instance-size", program.resources) == []  # no allowlist: any size
    only = stack_of(machines, {"instance_sizes": ["x1.tiny"]})
    ((_, message),) = violations(only, "instance-size", program.resources)
    assert f"machine web: size {default} is not allowed on this stack (allowed: x1.tiny" in message
    assert f"set machines[web].options.{option} to one of them" in message


# --- stack rules ---------------------------------------------------------------------------------------------------


def test_machine_without_docker_context():
    machines, program = qemu("pm", docker_context=False)
    ((urn, message),) = stack_violations(stack_of(machines), "machine-without-docker-context", program)
    assert urn.endswith(f"{outputs.COMPONENT}::pm")
    assert "machine pm gets no docker context" in message and "docker_context: false" in message
    machines, program = qemu("pm")
    assert stack_violations(stack_of(machines), "machine-without-docker-context", program) == []


def exported(program: Program, extra: dict[str, dict] | None = None) -> dict[str, dict]:
    """``pulumi stack export``'s resources after an ``up`` of ``program``: a VM's outputs are its inputs and more."""
    found = {}
    for r in program.resources:
        outs = {**test_graph.plain(r.inputs), **(test_graph.VM_OUTS if r.typ == QEMU_VM.token else {})}
        found[r.urn] = {"urn": r.urn, "type": r.typ, "outputs": {**outs, **(extra or {}).get(r.name, {})}}
    return found


def vm_of(program: Program) -> Registered:
    (vm,) = [r for r in program.resources if r.typ in drivers.vm_types()]
    return vm


def test_vm_replaced_tells_a_new_local_vm_from_a_restart_and_from_no_change():
    machines, before = qemu(options={"image": "debian-13-docker", "cpus": 2})
    stack = stack_of(machines)
    stack.previous = lambda: exported(before)
    # unchanged: the preview keeps the VM's last outputs
    last_outputs = exported(before)[vm_of(before).urn]["outputs"]
    assert stack_violations(stack, "vm-replaced", before, {"pm-vm": last_outputs}) == []
    # more CPUs: a power cycle, not a new VM (the preview shows the new inputs alone either way)
    _, restarted = qemu(options={"image": "debian-13-docker", "cpus": 4})
    assert stack_violations(stack, "vm-replaced", restarted) == []
    _, rebuilt = qemu(options={"image": "debian-12-docker", "cpus": 2})
    ((urn, message),) = stack_violations(stack, "vm-replaced", rebuilt)
    assert urn == vm_of(rebuilt).urn
    assert "machine pm: its VM pm-vm is replaced by this change (image): the new VM starts empty" in message
    # a new SSH key is not known at preview: the VM may be replaced
    new_key = {"pm-vm": {**vm_of(restarted).inputs, "authorized_key": UNKNOWN}}
    ((_, message),) = stack_violations(stack, "vm-replaced", rebuilt, new_key)
    assert "(authorized_key (not known yet))" in message


def test_vm_replaced_ignores_a_machine_that_is_new():
    machines, program = qemu()
    stack = stack_of(machines)
    stack.previous = dict
    assert stack_violations(stack, "vm-replaced", program) == []


@pytest.mark.parametrize(("driver", "identity"), [("aws", "arn"), ("azure", "vmId"), ("digitalocean", "urn")])
def test_vm_replaced_in_the_clouds_when_the_provider_plans_a_new_instance(driver, identity):
    machines, program = cloud(driver)
    vm = vm_of(program)
    stack = stack_of(machines)
    stack.previous = lambda: exported(program, {vm.name: {identity: "id-of-the-running-vm"}})
    kept = {vm.name: {**vm.inputs, identity: "id-of-the-running-vm"}}  # an update keeps it
    assert stack_violations(stack, "vm-replaced", program, kept) == []
    ((urn, message),) = stack_violations(stack, "vm-replaced", program, {vm.name: {**vm.inputs, identity: UNKNOWN}})
    assert urn == vm.urn and "(the provider plans a new instance)" in message


def test_vm_replaced_reads_no_state_for_a_stack_without_vms():
    machines, program = qemu()
    stack = stack_of(machines)

    def unexpected():
        raise AssertionError("the last deployment was read")

    stack.previous = unexpected
    without_vms = Program([r for r in program.resources if r.typ != QEMU_VM.token])
    assert stack_violations(stack, "vm-replaced", without_vms) == []


def test_vm_replaced_is_not_applicable_after_the_deployment_or_without_the_last_state():
    machines, program = qemu()
    stack = stack_of(machines, PULUMI_DRY_RUN="false")
    with pytest.raises(_NotApplicableError) as info:
        stack_violations(stack, "vm-replaced", program)
    assert info.value.reason.startswith("only a preview can tell")
    stack = stack_of(machines, PULUMI_DRY_RUN="true")

    def unreadable():
        raise rules.PreviousStateError("`pulumi stack export` failed: error: no stack named 'unit' found")

    stack.previous = unreadable
    with pytest.raises(_NotApplicableError) as info:
        stack_violations(stack, "vm-replaced", program)
    assert info.value.reason == (
        "the stack's last deployment cannot be read: `pulumi stack export` failed: error: no stack named 'unit' found"
    )


def fake_pulumi(tmp_path, monkeypatch, body: str) -> None:
    (tmp_path / "pulumi").write_text(f"#!/bin/sh\n{body}\n")
    (tmp_path / "pulumi").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")


def test_previous_resources_reads_the_export_of_the_fully_named_stack(tmp_path, monkeypatch):
    deployment = {"deployment": {"resources": [{"urn": "urn:a", "type": "t", "outputs": {"x": 1}}]}}
    fake_pulumi(tmp_path, monkeypatch, f'echo "$*" > "{tmp_path}/args"; echo \'{json.dumps(deployment)}\'')
    stack = rules.Stack.from_env({"PULUMI_STACK": "s", "PULUMI_PROJECT": "docker-machine", "PULUMI_ORGANIZATION": "o"})
    assert stack.previous() == {"urn:a": {"urn": "urn:a", "type": "t", "outputs": {"x": 1}}}
    assert (tmp_path / "args").read_text() == "stack export --stack o/docker-machine/s\n"
    fake_pulumi(tmp_path, monkeypatch, 'echo "warning: x" >&2; echo "error: no stack named s found" >&2; exit 255')
    with pytest.raises(rules.PreviousStateError, match="failed: error: no stack named s found$"):
        stack.previous()


# --- settings and enforcement --------------------------------------------------------------------------------------


def levels(stack: rules.Stack) -> dict[str, EnforcementLevel]:
    return {p.name: p.enforcement_level for p in rules.policies(stack)}


def test_every_rule_has_a_check_and_its_default_level():
    assert set(rules.CHECKS) == set(policy_settings.RULES)
    assert levels(stack_of([])) == {
        "policy-settings": EnforcementLevel.MANDATORY,
        **{name: EnforcementLevel(level) for name, level in policy_settings.RULES.items()},
    }
    assert [name for name, level in policy_settings.RULES.items() if level == "advisory"] == [
        "engine-ingress-anywhere", "machine-without-docker-context", "vm-replaced",
    ]  # fmt: skip


def test_enforcement_per_stack():
    settings = {"enforcement": {"engine-ingress-anywhere": "mandatory", "machine-without-docker-context": "disabled"}}
    found = levels(stack_of([], settings))
    assert found["engine-ingress-anywhere"] == EnforcementLevel.MANDATORY
    assert found["machine-without-docker-context"] == EnforcementLevel.DISABLED
    assert found["daemon-tls"] == EnforcementLevel.MANDATORY


BAD_SETTINGS = {
    "production": "yes",
    "instance_sizes": "t3.small",
    "enforcement": {"engine-ingres-anywhere": "mandatory", "daemon-tls": "strict"},
    "prod": True,
}


def test_bad_settings_stop_the_stack_with_one_line_per_problem():
    machines, program = qemu()
    stack = stack_of(machines, BAD_SETTINGS)
    stack_resource = Registered(rules.STACK_TYPE, "docker-machine-unit", {}, None, urn=STACK_URN)
    ((name, message),) = violations(stack, "policy-settings", [stack_resource, *program.resources])
    assert name == "docker-machine-unit"
    assert message.splitlines() == [
        "invalid docker-machine:policy settings:",
        '  docker-machine:policy.production: Input should be a valid boolean, got "yes"',
        '  docker-machine:policy.instance_sizes: Input should be a valid list, got "t3.small"',
        "  docker-machine:policy.enforcement.engine-ingres-anywhere: 'engine-ingres-anywhere' is not a rule; allowed: "
        + ", ".join(policy_settings.RULES),
        "  docker-machine:policy.enforcement.daemon-tls: the level must be one of mandatory, advisory, disabled, "
        'got "strict"',
        "  docker-machine:policy.prod: unknown setting; allowed: production, instance_sizes, enforcement",
    ]
    assert levels(stack) == levels(stack_of([]))  # the other rules keep their defaults
    assert violations(stack_of(machines, {"production": True}), "policy-settings", [stack_resource]) == []


def test_a_secret_setting_is_never_repeated_in_an_error():
    config = {policy_settings.KEY: json.dumps({"production": "s3cr3t", "enforcement": {"t0ken": "disabled"}})}
    env = {"PULUMI_CONFIG": json.dumps(config), "PULUMI_CONFIG_SECRET_KEYS": json.dumps([policy_settings.KEY])}
    error = rules.Stack.from_env(env).settings_error
    assert "docker-machine:policy.production: Input should be a valid boolean" in error
    assert "s3cr3t" not in error and "t0ken" not in error


def test_machines_the_program_would_refuse_are_left_to_it():
    stack = stack_of([{"name": "ok", "driver": "qemu"}, {"name": "bad name!"}, "junk"])
    assert list(stack.machines) == ["ok"]
    assert rules.Stack.from_env({"PULUMI_CONFIG": json.dumps({"docker-machine:machines": "not json"})}).machines == {}


def test_dockerd_flags_of_the_drop_in_are_what_daemon_tls_reads():
    flags = dockerd.parse_args(provisioning.dockerd_args(provisioning.dropin(EngineOptions(), "qemu")))
    assert dict(flags)["tlscacert"] == provisioning.CA_CERT
