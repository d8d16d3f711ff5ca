"""``scripts/machine preview``: `pulumi preview --json` turned into what a reviewer of Docker hosts needs to know.

One line per machine (create / update / replace / delete / unchanged), the consequences in words (a VM replaced
loses its containers, a daemon restart, a certificate reissued, an ingress widened), destructive ones again in a
warning block at the top, and the policy pack's results. The report is built from step kinds, property names and
a few values that are never secret (addresses, CIDRs, flag names): the CLI masks secrets in its JSON, and no
input value is copied into the report otherwise. Formats: markdown (PR comments), text, json (docs/preview.md).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from components import dockerd, drivers, outputs
from components.steps import names, provisioning

REPORT_VERSION = 1
# What the engine puts where a value is not known until the update runs, and where a secret was.
UNKNOWN = "04da6b54-80e4-46f7-96ec-b56ff0331ba9"
SECRET = "[secret]"
# GitHub refuses comments longer than this.
COMMENT_LIMIT = 65536
ANYWHERE = ("0.0.0.0/0", "::/0", "*", "Internet", "Any")
REPLACE_OPS = ("replace", "create-replacement", "delete-replaced", "discard-replaced")
ACTIONS = ("create", "replace", "delete", "update", "unchanged")
DESTRUCTIVE, DISRUPTIVE, NOTE = "destructive", "disruptive", "note"
# Daemon flags that no engine option sets, in words; the engine options' own flags are named after the option
# (components/model.py), any other changed flag as it is.
FLAG_WORDS = {
    "log-level": "log level", "host": "listen addresses", "tlscacert": "CA path", "tlscert": "certificate path",
    "tlskey": "key path",
}  # fmt: skip

# What a swarm step's creation or deletion does to its machine (components/swarm.py): (severity, words).
SWARM_STEPS = {
    (names.SWARM_INIT, "create"): (NOTE, "initialises the swarm (first manager)"),
    (names.SWARM_INIT, "delete"): (DESTRUCTIVE, "swarm taken down: its services are lost"),
    (names.SWARM_JOIN, "create"): (NOTE, "joins the swarm"),
    (names.SWARM_JOIN, "delete"): (DISRUPTIVE, "leaves the swarm"),
    (names.SWARM_READY, "delete"): (DISRUPTIVE, "drained: its swarm tasks move to other nodes"),
    (names.SWARM_REMOVE, "delete"): (NOTE, "node removed from the swarm"),
}
_SWARM_WORDS = {words for _, words in SWARM_STEPS.values()}


@dataclass(frozen=True)
class Consequence:
    severity: str  # destructive (data lost or access changed) | disruptive (a restart) | note
    text: str


@dataclass
class MachineChange:
    name: str
    action: str = "unchanged"
    consequences: list[Consequence] = field(default_factory=list)
    # (resource name, type token, op, changed inputs) of every step that changes something.
    resources: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class PolicyResult:
    pack: str
    policy: str
    level: str  # mandatory | advisory | remediate
    machine: str  # "" when the resource belongs to no machine
    resource: str
    message: str


@dataclass
class Report:
    stack: str
    machines: list[MachineChange]
    stack_consequences: list[Consequence]
    policies: list[PolicyResult]
    changes: dict[str, int]
    errors: list[str]
    failed: bool

    @property
    def warnings(self) -> list[str]:
        lines = [f"{m.name}: {c.text}" for m in self.machines for c in m.consequences if c.severity == DESTRUCTIVE]
        lines += [f"stack: {c.text}" for c in self.stack_consequences if c.severity == DESTRUCTIVE]
        lines += [f"{p.machine or 'stack'}: policy {p.policy} (mandatory) failed" for p in self.policies
                  if p.level == "mandatory"]  # fmt: skip
        return lines

    @property
    def has_changes(self) -> bool:
        return any(m.action != "unchanged" for m in self.machines) or bool(self.stack_consequences)


# --- building -----------------------------------------------------------------------------------------------------


def _name(urn: str) -> str:
    return urn.rsplit("::", 1)[-1]


def _op(raw: str) -> str:
    return "replace" if raw in REPLACE_OPS else raw


def _inputs(state: dict[str, Any] | None) -> dict[str, Any]:
    return (state or {}).get("inputs") or {}


def _known(value: Any) -> bool:
    return value not in (None, UNKNOWN, SECRET)


def _changed_keys(step: dict[str, Any]) -> list[str]:
    """The inputs a step changes: the engine's reasons, else a comparison of old and new inputs."""
    keys = step.get("replaceReasons") or step.get("diffReasons") or list((step.get("detailedDiff") or {}).keys())
    if not keys and step.get("oldState") and step.get("newState"):
        old, new = _inputs(step["oldState"]), _inputs(step["newState"])
        keys = [k for k in sorted(set(old) | set(new)) if k != "__provider" and old.get(k) != new.get(k)]
    return sorted({k.split(".", 1)[0].split("[", 1)[0] for k in keys} - {"__provider"})


def _has_unknown(value: Any) -> bool:
    if isinstance(value, list):
        return any(map(_has_unknown, value))
    if isinstance(value, dict):
        return any(map(_has_unknown, value.values()))
    return value == UNKNOWN


def _guessed(step: dict[str, Any], op: str, keys: list[str]) -> bool:
    """An update the preview can only guess: each changed input is unknown until ``up`` computes it (an address
    after a power cycle, a certificate serial), or the change hides behind a secret."""
    new = _inputs(step.get("newState"))
    return op in ("update", "replace") and all(_has_unknown(new.get(k)) for k in keys)


def _machine_of(urn: str, parents: dict[str, str]) -> str | None:
    seen = set()
    while urn and urn not in seen:
        seen.add(urn)
        if urn.split("::")[-2].rsplit("$", 1)[-1] == outputs.COMPONENT:
            return _name(urn)
        urn = parents.get(urn, "")
    return None


def dockerd_flags(script: str) -> dict[str, list[str]]:
    """The daemon's flags from a daemon-config script (its drop-in, read by the one dockerd parser), by long flag
    name, and its ``Environment`` lines."""
    flags: dict[str, list[str]] = {}
    try:
        pairs = dockerd.parse_args(provisioning.dockerd_args(script))
    except ValueError:
        pairs = []
    for name, value in pairs:
        flags.setdefault(name, []).append(value)
    environment = [line for line in script.splitlines() if line.startswith("Environment=")]
    if environment:
        flags["Environment"] = environment
    return flags


def flag_words(flag: str) -> str:
    """A changed daemon flag as a reviewer reads it: the engine option that sets it, in words."""
    if flag == "Environment":
        return "engine environment"
    return provisioning.engine_option_words().get(flag) or FLAG_WORDS.get(flag) or f"--{flag}"


def _daemon_reason(old: Any, new: Any, cert_reissued: bool) -> str:
    if cert_reissued or not (_known(old) and _known(new)):
        return "server certificate reissued" if cert_reissued else "its configuration changed"
    before, after = dockerd_flags(old), dockerd_flags(new)
    changed = [f for f in sorted(set(before) | set(after)) if sorted(before.get(f, [])) != sorted(after.get(f, []))]
    words = list(dict.fromkeys(flag_words(f) for f in changed))
    return f"{', '.join(words)} changed" if words else "its configuration changed"


def _rules(type_: str, state: dict[str, Any] | None) -> set[tuple[str, str]]:
    """(source, port/protocol) pairs a cloud firewall lets in, as its driver reads them."""
    pairs = set()
    for rule in drivers.ingress_rules(type_, _inputs(state)):
        pairs |= {(str(s), f"{rule.port_text}/{rule.protocol}") for s in rule.sources if _known(s)}
    return pairs


def _ingress(type_: str, step: dict[str, Any]) -> list[Consequence]:
    added = _rules(type_, step.get("newState")) - _rules(type_, step.get("oldState"))
    found = []
    for source, port in sorted(added, key=lambda pair: (pair[1], pair[0])):
        anywhere = source in ANYWHERE
        found.append(Consequence(DESTRUCTIVE if anywhere else NOTE, f"ingress widened: {source} on {port}"))
    return found


def _vm(type_: str, op: str, step: dict[str, Any], keys: list[str]) -> list[Consequence]:
    if op == "replace":
        why = f" ({', '.join(keys)} changed)" if keys else ""
        return [Consequence(DESTRUCTIVE, f"VM replaced{why}: containers and volumes on it are lost")]
    if op == "delete":
        return [Consequence(DESTRUCTIVE, "VM destroyed: containers and volumes on it are lost")]
    if op != "update":
        return []
    vm = drivers.vm_resource(type_)
    cycled = [k for k in keys if vm is not None and k in vm.power_cycle_inputs]
    found = []
    if cycled:
        found.append(Consequence(DISRUPTIVE, f"VM power-cycled to apply {', '.join(cycled)}: containers stop "
                                             "(those with a restart policy come back)"))  # fmt: skip
    power = _inputs(step.get("newState")).get("power")
    if "power" in keys and power in ("running", "stopped"):
        found.append(Consequence(DISRUPTIVE, "VM started" if power == "running" else "VM stopped"))
    others = [k for k in keys if k not in cycled and k != "power"]
    if others:
        found.append(Consequence(DISRUPTIVE, f"VM updated in place ({', '.join(others)} changed)"))
    if not keys:
        found.append(Consequence(DISRUPTIVE, "VM is not in its configured power state (stopped or killed outside "
                                             "Pulumi): up brings it back"))  # fmt: skip
    return found


def _consequences(step: dict[str, Any], op: str, keys: list[str], cert_reissued: bool) -> list[Consequence]:
    state = step.get("newState") or step.get("oldState") or {}
    type_ = state.get("type", "")
    if type_ in drivers.vm_types():
        return _vm(type_, op, step, keys)
    if type_ in drivers.firewall_types() and op in ("create", "update", "replace"):
        return _ingress(type_, step)
    stage = _inputs(state).get("step") if type_ == outputs.REMOTE_COMMAND.token else None
    if (stage, op) in SWARM_STEPS:
        return [Consequence(*SWARM_STEPS[(stage, op)])]
    if op not in ("update", "replace", "delete"):
        return [Consequence(NOTE, "docker context created")] if type_ == outputs.DOCKER_CONTEXT.token else []
    if type_ == outputs.REMOTE_COMMAND.token and op != "delete":
        stage = _inputs(state).get("step")
        if stage == names.DAEMON_CONFIG:
            old, new = _inputs(step.get("oldState")).get("stdin"), _inputs(step.get("newState")).get("stdin")
            return [Consequence(DISRUPTIVE, f"Docker daemon restarts ({_daemon_reason(old, new, cert_reissued)})")]
        if stage == names.INSTALL_DOCKER:
            return [Consequence(DISRUPTIVE, "Docker install step runs again (engine install settings changed)")]
        if stage == names.TLS:
            return [Consequence(NOTE, "TLS files on the host rewritten")]
        return []
    if type_ == outputs.SERVER_CERTIFICATE.token:
        return [Consequence(NOTE, f"server certificate reissued ({_cert_reason(step, keys)})")]
    if type_ == outputs.CERTIFICATE_AUTHORITY.token:
        return [Consequence(DESTRUCTIVE, "CA reissued: every machine gets a new certificate and every client needs "
                                         "the new client certificate (scripts/machine env)")]  # fmt: skip
    if type_ == outputs.SSH_KEY.token:
        return [Consequence(NOTE, "SSH key replaced")]
    if type_ == outputs.DOCKER_CONTEXT.token:
        return [Consequence(NOTE, "docker context removed" if op == "delete" else "docker context updated")]
    return []


def _cert_reason(step: dict[str, Any], keys: list[str]) -> str:
    old, new = _inputs(step.get("oldState")).get("sans"), _inputs(step.get("newState")).get("sans")
    if "sans" in keys and isinstance(old, list) and isinstance(new, list) and all(map(_known, old + new)):
        if old[:1] != new[:1]:
            return "address changed"
        added, removed = [s for s in new if s not in old], [s for s in old if s not in new]
        change = ", ".join([f"+{s}" for s in added] + [f"-{s}" for s in removed])
        return f"tls_san changed: {change}"
    if "sans" in keys:
        return "address changed"
    if "rotation" in keys:
        return "rotation requested"
    if "cert" in keys:
        return "less than 30 days left: renewed"
    return f"{', '.join(keys)} changed" if keys else "CA changed"


def _parents(steps: list[dict[str, Any]]) -> dict[str, str]:
    """Each step's parent URN (a machine's resources are children of its component)."""
    parents = {}
    for step in steps:
        for state in (step.get("newState"), step.get("oldState")):
            if state and state.get("parent"):
                parents[step["urn"]] = state["parent"]
    return parents


def _settle(change: MachineChange, guessed: bool) -> None:
    """A machine's change as the report shows it: in a stable order, with what the preview only guessed at."""
    # The engine walks independent resources in any order: sorted, the same change reads the same every time.
    change.resources.sort(key=lambda r: r["name"])
    change.consequences.sort(key=lambda c: ((DESTRUCTIVE, DISRUPTIVE, NOTE).index(c.severity), c.text))
    if guessed and change.action in ("update", "replace"):
        change.consequences.append(Consequence(NOTE, _guess_note(change)))
    # A new machine's parts follow from the line itself; of a removed machine, what is lost and how it leaves
    # its swarm.
    if change.action == "create":
        change.consequences = []
    elif change.action == "delete":
        change.consequences = [c for c in change.consequences if c.severity == DESTRUCTIVE or c.text in _SWARM_WORDS]


def build(preview: dict[str, Any], policy_events: list[dict[str, Any]], stack: str, errors: list[str],
          failed: bool, deployed: list[str] = ()) -> Report:  # fmt: skip
    """The report of one preview: its JSON document, the policy events the engine sent alongside, and the machines
    already deployed (the document leaves out what does not change)."""
    steps = preview.get("steps") or []
    parents = _parents(steps)
    machines = {name: MachineChange(name) for name in deployed}
    stack_consequences: list[Consequence] = []
    cert_reissued = {
        _machine_of(s["urn"], parents) for s in steps
        if (s.get("newState") or s.get("oldState") or {}).get("type") == outputs.SERVER_CERTIFICATE.token
        and _op(s["op"]) in ("update", "replace") and not _guessed(s, _op(s["op"]), _changed_keys(s))
    }  # fmt: skip
    guessed: set[str] = set()
    vm_types = drivers.vm_types()
    for step in steps:
        op, urn = _op(step["op"]), step["urn"]
        type_ = (step.get("newState") or step.get("oldState") or {}).get("type", "")
        # A step outside a machine's component that is about one machine (a swarm member's) counts for it.
        machine = _machine_of(urn, parents) or _inputs(step.get("newState") or step.get("oldState")).get("machine")
        if type_ == outputs.COMPONENT:
            change = machines.setdefault(_name(urn), MachineChange(_name(urn)))
            if op in ("create", "delete"):
                change.action = op
            continue
        if op in ("same", "read", "refresh"):
            continue
        keys = _changed_keys(step) if op in ("update", "replace") else []
        reissued = machine in cert_reissued
        stage = _inputs(step.get("newState")).get("step")
        if type_ == outputs.API_CHECK.token:
            found = []  # the check that Docker answers runs after every change: not a change itself
        elif type_ not in vm_types and _guessed(step, op, keys) and not (reissued and stage in names.CERTIFICATE_STEPS):
            guessed.add(machine or "")
            found = []
        else:
            found = _consequences(step, op, keys, reissued)
        if machine is None:
            if type_ != "pulumi:pulumi:Stack":
                stack_consequences += found
            continue
        change = machines.setdefault(machine, MachineChange(machine))
        change.resources.append({"name": _name(urn), "type": type_, "op": op, "changed": keys})
        change.consequences += [c for c in found if c not in change.consequences]
        if change.action in ("unchanged", "update"):
            vm_replaced = type_ in vm_types and op in ("replace", "delete")
            change.action = "replace" if vm_replaced else "update"
    for change in machines.values():
        _settle(change, change.name in guessed)
    policies = [_policy(event, parents) for event in policy_events]
    return Report(
        stack=stack,
        machines=sorted(machines.values(), key=lambda m: (ACTIONS.index(m.action), m.name)),
        stack_consequences=stack_consequences,
        policies=sorted(policies, key=lambda p: (p.level != "mandatory", p.machine, p.policy)),
        changes={k: v for k, v in (preview.get("changeSummary") or {}).items() if k != "same"},
        errors=errors,
        failed=failed,
    )


def _guess_note(change: MachineChange) -> str:
    vm_updated = any(r["type"] in drivers.vm_types() and r["op"] == "update" for r in change.resources)
    if change.action == "replace":
        return "everything on it is provisioned again"
    if vm_updated:
        return "provisioning runs again only if the VM's address or SSH port changes (known after the VM update)"
    return "some steps may run again: what they depend on is known only during up"


def _policy(event: dict[str, Any], parents: dict[str, str]) -> PolicyResult:
    urn = event.get("resourceUrn") or ""
    machine = _machine_of(urn, parents) if urn else None
    level = event.get("enforcementLevel", "")
    return PolicyResult(
        pack=event.get("policyPackName", ""),
        policy=event.get("policyName", ""),
        level="advisory" if level == "warning" else level,
        machine=machine or "",
        resource=_name(urn) if urn else "",
        message=" ".join(event.get("message", "").split()),
    )


# --- rendering ----------------------------------------------------------------------------------------------------


def as_json(report: Report) -> str:
    """The stable form (docs/preview.md): keys are only ever added, within a version."""
    document = {
        "version": REPORT_VERSION,
        "stack": report.stack,
        "failed": report.failed,
        "hasChanges": report.has_changes,
        "changes": report.changes,
        "warnings": report.warnings,
        "machines": [
            {
                "name": m.name,
                "action": m.action,
                "consequences": [asdict(c) for c in m.consequences],
                "resources": m.resources,
            }
            for m in report.machines
        ],
        "stackConsequences": [asdict(c) for c in report.stack_consequences],
        "policies": [asdict(p) for p in report.policies],
        "errors": report.errors,
    }
    return json.dumps(document, indent=2, sort_keys=False) + "\n"


def what(machine: MachineChange) -> str:
    if machine.action == "create":
        return "new machine"
    if machine.action == "delete" and not machine.consequences:
        return "machine removed"
    return "; ".join(c.text for c in machine.consequences) or ("no change" if machine.action == "unchanged" else "")


def _summary(report: Report) -> str:
    counts = {a: sum(m.action == a for m in report.machines) for a in ACTIONS}
    parts = [f"{n} to {a}" if a != "unchanged" else f"{n} unchanged" for a, n in counts.items() if n]
    return ", ".join(parts) or "no machines"


def as_text(report: Report) -> str:
    lines = [f"Stack {report.stack}: {_summary(report)}"]
    lines += [f"WARNING {w}" for w in report.warnings]
    width = max([len(m.name) for m in report.machines] + [4])
    lines += [f"  {m.name:<{width}}  {m.action:<9}  {what(m)}".rstrip() for m in report.machines]
    lines += [f"  stack: {c.text}" for c in report.stack_consequences]
    for p in report.policies:
        lines.append(f"  policy {p.level} {p.pack}/{p.policy} on {p.machine or 'stack'} ({p.resource}): {p.message}")
    lines += [f"  error: {e}" for e in report.errors]
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def as_markdown(report: Report, limit: int = COMMENT_LIMIT) -> str:
    head = [f"#### Stack `{report.stack}`: {_summary(report)}", ""]
    if report.warnings:
        head += ["> [!WARNING]"] + [f"> - **{_cell(w)}**" for w in report.warnings] + [""]
    rows = [f"| `{m.name}` | {m.action} | {_cell(what(m))} |" for m in report.machines]
    rows += [f"| _stack_ | update | {_cell(c.text)} |" for c in report.stack_consequences]
    tail: list[str] = []
    if report.policies:
        tail += ["", "| Policy | Level | Machine | Result |", "|---|---|---|---|"]
        marks = {"mandatory": "❌ mandatory", "advisory": "⚠️ advisory"}
        tail += [
            f"| `{p.pack}/{p.policy}` | {marks.get(p.level, p.level)} | {_cell(p.machine or p.resource or 'stack')} "
            f"| {_cell(p.message)} |"
            for p in report.policies
        ]
    if report.errors:
        tail += ["", "**Errors**", ""] + [f"- {_cell(e)}" for e in report.errors]
    table = ["| Machine | Change | What it means |", "|---|---|---|"]

    def assemble(kept: list[str], note: list[str]) -> str:
        return "\n".join(head + (table + kept if kept else []) + note + tail) + "\n"

    text = assemble(rows, [])
    kept = list(rows)
    while len(text) > limit and kept:
        kept.pop()
        cut = len(rows) - len(kept)
        note = ["", f"_{cut} more machine row(s) cut to fit a comment: run `scripts/machine preview --format json`._"]
        text = assemble(kept, note)
    return text


FORMATS = {"markdown": as_markdown, "text": as_text, "json": as_json}
