"""docker-machine's policy rules (docs/policy.md), built for one stack by ``policies(Stack.from_env())``.

Resource rules look at what a resource is really given: the scripts the remote steps send, the cloud firewall rules,
the instance sizes. During ``up`` a resource rule runs when its resource is registered, before it is created (but
after what it waits for exists), and stack rules run after the whole deployment: preview first (docs/policy.md).
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pulumi_policy import (
    EnforcementLevel,
    Policy,
    ReportViolation,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    StackValidationArgs,
    StackValidationPolicy,
)
from pulumi_policy.proxy import UnknownValueError

from components import config, dockerd, drivers, outputs, policy_settings
from components.model import ConfigError, EngineOptions, MachineConfig
from components.policy_settings import PolicySettings
from components.steps import names, provisioning

STACK_TYPE = "pulumi:pulumi:Stack"
# How `pulumi stack export` marks a value it keeps encrypted.
SECRET_SIG = "4dabf18193072939515e22adb298388d"
LOCAL_LISTENERS = ("unix://", "fd://")


class PreviousStateError(RuntimeError):
    pass


def previous_resources(stack: str) -> dict[str, dict[str, Any]]:
    """The stack's resources by URN as its last deployment left them (``pulumi stack export``: secrets stay
    encrypted)."""
    try:
        result = subprocess.run(
            ["pulumi", "stack", "export", "--stack", stack], capture_output=True, text=True, timeout=120
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        raise PreviousStateError(f"`pulumi stack export` could not run: {err}") from None
    if result.returncode != 0:
        lines = result.stderr.strip().splitlines() or [f"exit code {result.returncode}"]
        raise PreviousStateError(f"`pulumi stack export` failed: {lines[-1]}")
    try:
        resources = json.loads(result.stdout)["deployment"].get("resources") or []
    except (ValueError, KeyError, AttributeError):
        raise PreviousStateError("`pulumi stack export` printed no deployment") from None
    return {r["urn"]: r for r in resources}


@dataclass
class Stack:
    """What the rules know about the stack being deployed, from the settings the engine hands the pack."""

    settings: PolicySettings = field(default_factory=PolicySettings)
    # The problem with docker-machine:policy (reported by policy-settings; the rules then use the defaults).
    settings_error: str = ""
    machines: dict[str, MachineConfig] = field(default_factory=dict)
    dry_run: bool = True
    previous: Callable[[], dict[str, dict[str, Any]]] = dict

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Stack:
        """From the variables the language host sets before the pack starts (PULUMI_CONFIG, PULUMI_STACK…)."""
        settings = json.loads(env.get("PULUMI_CONFIG") or "{}")
        secret_keys = json.loads(env.get("PULUMI_CONFIG_SECRET_KEYS") or "[]")
        name = env.get("PULUMI_STACK", "stack")
        stack = cls(dry_run=env.get("PULUMI_DRY_RUN", "true") == "true")
        org, project = env.get("PULUMI_ORGANIZATION"), env.get("PULUMI_PROJECT")
        stack.previous = lambda: previous_resources(f"{org}/{project}/{name}" if org and project else name)
        key = policy_settings.KEY
        try:
            stack.settings = policy_settings.load(settings.get(key), secret=key in secret_keys)
        except ConfigError as err:
            stack.settings_error = str(err)
        stack.machines = config.machines_of(settings.get("docker-machine:machines") or "[]")
        return stack


def _machine_of(parent: str | None) -> str:
    """The machine of a resource whose parent has this URN: a DockerMachine component is named after its machine."""
    parts = (parent or "").split("::")  # urn:pulumi:STACK::PROJECT::PARENT-TYPES$TYPE::NAME
    return "::".join(parts[3:]) if len(parts) > 3 and parts[2].rpartition("$")[2] == outputs.COMPONENT else ""


def _step(args: ResourceValidationArgs, step: str) -> bool:
    """Whether the resource is the given remote step of a machine (components/steps/names.py)."""
    return args.resource_type == outputs.REMOTE_COMMAND.token and args.props.get("step") == step


# --- what dockerd is started with --------------------------------------------------------------------------------


def _dockerd_flags(stack: Stack, args: ResourceValidationArgs) -> tuple[list[tuple[str, str]], str]:
    """dockerd's flags in the drop-in the daemon-config step sends, and where they were read. At preview of a new
    server certificate the script is not known yet (its serial is in it): then the drop-in as ``provisioning.dropin``
    builds it from the machine's settings, and ``up`` checks the real script again before it runs."""
    try:
        text, seen = args.props["stdin"], "in the daemon-config script"
    except UnknownValueError:
        machine = stack.machines.get(args.props["machine"])
        if machine is None:
            raise
        text, seen = provisioning.dropin(machine.engine, machine.driver), "from the machine's settings"
    return dockerd.parse_args(provisioning.dockerd_args(text)), seen


def daemon_tls(stack: Stack, args: ResourceValidationArgs, report: ReportViolation) -> None:
    if not _step(args, names.DAEMON_CONFIG):
        return
    machine = args.props["machine"]
    try:
        flags, seen = _dockerd_flags(stack, args)
    except ValueError as err:
        report(
            f"machine {machine}: dockerd's command line cannot be checked ({err}); it must be the drop-in that "
            "components/provisioning.py writes"
        )
        return
    network = [value for name, value in flags if name == "host" and not value.startswith(LOCAL_LISTENERS)]
    last = dict(flags)  # dockerd keeps the last value given for a flag
    wanted = {
        "tlsverify": "true",
        "tlscacert": provisioning.CA_CERT,
        "tlscert": provisioning.SERVER_CERT,
        "tlskey": provisioning.SERVER_KEY,
    }
    missing = [
        f"--{name}" if value == "true" else f"--{name}={value}"
        for name, value in wanted.items()
        if last.get(name) != value
    ]
    if network and missing:
        report(
            f"machine {machine}: dockerd listens on {', '.join(network)} without {' '.join(missing)} ({seen}): "
            "every TCP listener needs mutual TLS with the stack's CA, as components/provisioning.py "
            "daemon_flags sets it"
        )


def insecure_registries(stack: Stack, args: ResourceValidationArgs, report: ReportViolation) -> None:
    if not stack.settings.production or not _step(args, names.DAEMON_CONFIG):
        return
    machine = args.props["machine"]
    try:
        flags, seen = _dockerd_flags(stack, args)
    except ValueError:
        return  # daemon-tls reports an unreadable command line
    registries = [value for name, value in flags if name == "insecure-registry"]
    if registries:
        report(
            f"machine {machine}: dockerd trusts {', '.join(registries)} without TLS verification ({seen}) on a "
            f"production stack: remove machines[{machine}].engine.insecure_registries"
        )


def install_url_https(stack: Stack, args: ResourceValidationArgs, report: ReportViolation) -> None:
    if not _step(args, names.INSTALL_DOCKER):
        return
    url = provisioning.install_url(args.props["stdin"])
    if url is not None and urllib.parse.urlsplit(url).scheme != "https":
        machine = args.props["machine"]
        report(
            f"machine {machine}: Docker's install script would be downloaded from {url} without TLS and run as "
            f"root: set machines[{machine}].engine.install_url to an https:// URL (default https://get.docker.com)"
        )


# --- cloud firewalls and sizes ------------------------------------------------------------------------------------


def _anywhere(source: Any) -> bool:
    text = str(source).strip().lower()
    if text in ("*", "any", "internet"):
        return True
    try:
        return ipaddress.ip_network(text, strict=False).prefixlen == 0
    except ValueError:
        return False


def _openings(resource_type: str, props: Mapping[str, Any]) -> list[tuple[range | None, list[str]]]:
    """The TCP ports a firewall resource of a driver lets in from anywhere, each with the sources that are anywhere."""
    found = []
    for rule in drivers.ingress_rules(resource_type, props):
        anywhere = [s for s in rule.sources if s and _anywhere(s)]
        if rule.protocol in ("tcp", "*", "any", "6", "-1", "all") and anywhere:
            found.append((rule.ports, anywhere))
    return found


def _machine_ports(stack: Stack, machine: str) -> tuple[set[int], int]:
    """(SSH ports, engine port) of a machine: 22 and its driver's SSH port; engine.port."""
    found = stack.machines.get(machine)
    if found is None:
        return {22}, EngineOptions().port
    return {22, drivers.load(found.driver).ssh_port(found.options)}, found.engine.port


def _ingress(stack: Stack, args: ResourceValidationArgs, report: ReportViolation, what: str) -> None:
    machine = _machine_of(args.opts.parent)
    ssh_ports, engine_port = _machine_ports(stack, machine)
    ports = ssh_ports if what == "ssh" else {engine_port}
    for opened, sources in _openings(args.resource_type, args.props):
        hit = sorted(p for p in ports if opened is None or p in opened)
        if not hit:
            continue
        where = f"machine {machine}: {args.name}" if machine else args.name
        to = "/".join(map(str, hit))
        if what == "ssh":
            report(
                f"{where} lets SSH (port {to}) in from anywhere ({', '.join(sources)}) on a production stack: set "
                f"machines[{machine or '…'}].options.allowed_cidrs.ssh to the networks that need it (including "
                "the host running pulumi up) and keep the port out of open_ports"
            )
        else:
            report(
                f"{where} lets the Docker engine port {to} in from anywhere ({', '.join(sources)}): it only "
                f"answers mutual TLS, but set machines[{machine or '…'}].options.allowed_cidrs.engine to the "
                "networks of its clients (including the host running pulumi up) to keep it out of scans"
            )
        return


def ssh_ingress_anywhere(stack: Stack, args: ResourceValidationArgs, report: ReportViolation) -> None:
    if stack.settings.production:
        _ingress(stack, args, report, "ssh")


def engine_ingress_anywhere(stack: Stack, args: ResourceValidationArgs, report: ReportViolation) -> None:
    _ingress(stack, args, report, "engine")


def instance_size(stack: Stack, args: ResourceValidationArgs, report: ReportViolation) -> None:
    allowed = stack.settings.instance_sizes
    vm = drivers.vm_resource(args.resource_type)
    if not allowed or vm is None or not vm.size_path:
        return
    option = vm.size_option
    size: Any = args.props
    for key in vm.size_path:
        size = size.get(key) if isinstance(size, Mapping) else None
    if size not in allowed:
        machine = _machine_of(args.opts.parent) or "…"
        report(
            f"machine {machine}: size {size} is not allowed on this stack (allowed: {', '.join(allowed)}, from "
            f"{policy_settings.KEY}.instance_sizes): set machines[{machine}].options.{option} to one of them"
        )


def policy_settings_valid(stack: Stack, args: ResourceValidationArgs, report: ReportViolation) -> None:
    # On the stack resource: the engine registers it first, so even an `up` stops before creating anything.
    if args.resource_type == STACK_TYPE and stack.settings_error:
        report(stack.settings_error)


# --- the stack as a whole ----------------------------------------------------------------------------------------


def machine_without_docker_context(stack: Stack, args: StackValidationArgs, report: ReportViolation) -> None:
    contexts = [r for r in args.resources if r.resource_type == outputs.DOCKER_CONTEXT.token]
    with_context = {r.parent.urn for r in contexts if r.parent}
    for r in args.resources:
        if r.resource_type == outputs.COMPONENT and r.urn not in with_context:
            report(
                f"machine {r.name} gets no docker context: `docker --context` cannot reach it; remove "
                f"docker_context: false from machines[{r.name}] (or use `scripts/machine env {r.name}`)",
                r.urn,
            )


def _replaced(before: Mapping[str, Any], after: Any, resource_type: str) -> list[str]:
    """Why a VM that existed is replaced (empty: it is not). ``before``: its last outputs; ``after``: what the preview
    plans for it (the old outputs when unchanged; the new inputs for a local VM that changes)."""
    vm = drivers.vm_resource(resource_type)
    if vm is not None and vm.replace_inputs:
        changed = []
        for key in vm.replace_inputs:
            if isinstance(before.get(key), dict) and SECRET_SIG in before[key]:
                continue  # kept encrypted by the export: a secret (the host key) cannot be compared here
            try:
                if after.get(key) != before.get(key):
                    changed.append(key)
            except UnknownValueError:
                changed.append(f"{key} (not known yet)")
        return changed
    identity = vm.identity_output if vm is not None else None
    if identity is None:
        return []
    try:
        kept = after.get(identity)
    except UnknownValueError:
        kept = None
    return ["the provider plans a new instance"] if before.get(identity) and not kept else []


def vm_replaced(stack: Stack, args: StackValidationArgs, report: ReportViolation) -> None:
    vm_types = drivers.vm_types()
    vms = [r for r in args.resources if r.resource_type in vm_types]
    if not vms:
        return  # e.g. generic hosts: no need to read the last deployment
    if not stack.dry_run:
        args.not_applicable("only a preview can tell: during up, stack rules run after the deployment")
    try:
        previous = stack.previous()
    except PreviousStateError as err:
        args.not_applicable(f"the stack's last deployment cannot be read: {err}")
    for r in vms:
        before = previous.get(r.urn)
        if before is None or before.get("type") != r.resource_type:
            continue  # a new machine
        why = _replaced(before.get("outputs") or {}, r.props, r.resource_type)
        if why:
            machine = r.parent.name if r.parent and r.parent.resource_type == outputs.COMPONENT else r.name
            report(
                f"machine {machine}: its VM {r.name} is replaced by this change ({', '.join(why)}): the new VM "
                "starts empty, and the containers, images and volumes on the old one are lost; keep those settings "
                "as they are, or move the data off first",
                r.urn,
            )


# --- the pack ----------------------------------------------------------------------------------------------------

# The checks behind the rules named (with their default levels) in components/policy_settings.py.
CHECKS: dict[str, tuple[type[ResourceValidationPolicy] | type[StackValidationPolicy], Callable[..., None], str]] = {
    "daemon-tls": (
        ResourceValidationPolicy,
        daemon_tls,
        "The Docker daemon listens on TCP only with --tlsverify and the stack's CA.",
    ),
    "install-url-https": (
        ResourceValidationPolicy,
        install_url_https,
        "Docker's install script is downloaded over https.",
    ),
    "insecure-registries": (
        ResourceValidationPolicy,
        insecure_registries,
        "Production stacks trust no registry without TLS verification.",
    ),
    "ssh-ingress-anywhere": (
        ResourceValidationPolicy,
        ssh_ingress_anywhere,
        "Production stacks do not open SSH to the whole internet.",
    ),
    "instance-size": (
        ResourceValidationPolicy,
        instance_size,
        "Cloud instance sizes are among the stack's allowed sizes, when it has any.",
    ),
    "engine-ingress-anywhere": (
        ResourceValidationPolicy,
        engine_ingress_anywhere,
        "The Docker engine port is open only to its clients.",
    ),
    "machine-without-docker-context": (
        StackValidationPolicy,
        machine_without_docker_context,
        "Every machine gets a docker context.",
    ),
    "vm-replaced": (StackValidationPolicy, vm_replaced, "No machine's VM is replaced without notice."),
}


def policies(stack: Stack) -> list[Policy]:
    """policy-settings (always mandatory), then every rule at the stack's enforcement level."""

    def bound(check: Callable[..., None]) -> Callable[[Any, ReportViolation], None]:
        return lambda args, report: check(stack, args, report)

    found: list[Policy] = [
        ResourceValidationPolicy(
            name="policy-settings",
            description=f"The stack's {policy_settings.KEY} settings are valid.",
            validate=bound(policy_settings_valid),
            enforcement_level=EnforcementLevel.MANDATORY,
        )
    ]
    for name in policy_settings.RULES:
        kind, check, description = CHECKS[name]
        level = EnforcementLevel(stack.settings.level(name))
        found.append(kind(name, description, bound(check), enforcement_level=level))
    return found
