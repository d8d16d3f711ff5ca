"""scripts/machine preview's report: the golden previews (captured from real `pulumi preview --json` runs by
tests/e2e/test_preview.py) rendered as recorded, and the rules the local stacks cannot exercise (cloud firewalls,
the comment limit, policy events), on step documents shaped like the CLI's."""

from __future__ import annotations

import json
import os

import pytest

from components import outputs
from components.drivers.qemu.vm import VM as QEMU_VM
from scripts.machinecli import changes as preview

GOLDEN = os.path.join(os.path.dirname(os.path.dirname(__file__)), "golden", "preview")
CASES = sorted(name.removesuffix(".preview.json") for name in os.listdir(GOLDEN) if name.endswith(".preview.json"))
MACHINE_URN = "urn:pulumi:s::docker-machine::dockermachine:index:DockerMachine::m1"


def load_case(case: str) -> preview.Report:
    with open(os.path.join(GOLDEN, f"{case}.preview.json")) as f:
        captured = json.load(f)
    return preview.build(captured["document"], captured["policyEvents"], "STACK", captured["errors"],
                         captured["failed"], captured["deployed"])  # fmt: skip


def test_every_change_the_issue_names_has_a_golden_preview():
    assert {"create", "engine-label", "tls-san", "cpu-memory", "machine-removed", "no-change"} <= set(CASES)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("form", ["markdown", "text", "json"])
def test_golden_previews_render_as_recorded(case, form):
    suffix = {"markdown": "md", "text": "txt", "json": "report.json"}[form]
    with open(os.path.join(GOLDEN, f"{case}.{suffix}")) as f:
        assert preview.FORMATS[form](load_case(case)) == f.read()


def step(op: str, type_: str, name: str, old: dict | None, new: dict | None, **extra) -> dict:
    urn = f"urn:pulumi:s::docker-machine::dockermachine:index:DockerMachine${type_}::{name}"

    def state(inputs):
        return None if inputs is None else {"type": type_, "parent": MACHINE_URN, "inputs": inputs}

    return {"op": op, "urn": urn, "oldState": state(old), "newState": state(new), **extra}


def machine_step(op: str = "same") -> dict:
    return {"op": op, "urn": MACHINE_URN, "newState": {"type": outputs.COMPONENT}}


def report_of(*steps: dict, events: list[dict] | None = None) -> preview.Report:
    return preview.build({"steps": [machine_step(), *steps]}, events or [], "s", [], False)


# Where each cloud's firewall holds its inbound rules.
INGRESS_INPUTS = {
    "aws:ec2/securityGroup:SecurityGroup": "ingress",
    "azure-native:network:NetworkSecurityGroup": "securityRules",
    "digitalocean:index/firewall:Firewall": "inboundRules",
}


@pytest.mark.parametrize(
    ("type_", "old_rules", "new_rules", "expected"),
    [
        (
            "aws:ec2/securityGroup:SecurityGroup",
            [{"fromPort": 2376, "toPort": 2376, "protocol": "tcp", "cidrBlocks": ["203.0.113.0/24"]}],
            [{"fromPort": 2376, "toPort": 2376, "protocol": "tcp", "cidrBlocks": ["0.0.0.0/0"]}],
            "ingress widened: 0.0.0.0/0 on 2376/tcp",
        ),
        (
            "azure-native:network:NetworkSecurityGroup",
            [{"destinationPortRange": "22", "protocol": "Tcp", "sourceAddressPrefix": "198.51.100.7/32",
              "direction": "Inbound", "access": "Allow"}],
            [{"destinationPortRange": "22", "protocol": "Tcp", "sourceAddressPrefixes": ["198.51.100.7/32", "::/0"],
              "direction": "Inbound", "access": "Allow"}],
            "ingress widened: ::/0 on 22/tcp",
        ),
        (
            "digitalocean:index/firewall:Firewall",
            [{"portRange": "2376", "protocol": "tcp", "sourceAddresses": ["192.0.2.1/32"]}],
            [{"portRange": "2376", "protocol": "tcp", "sourceAddresses": ["192.0.2.1/32", "0.0.0.0/0"]}],
            "ingress widened: 0.0.0.0/0 on 2376/tcp",
        ),
    ],
)  # fmt: skip
def test_a_cloud_firewall_opened_to_anywhere_is_a_warning(type_, old_rules, new_rules, expected):
    key = INGRESS_INPUTS[type_]
    report = report_of(step("update", type_, "m1-firewall", {key: old_rules}, {key: new_rules}, diffReasons=[key]))
    assert [c.text for c in report.machines[0].consequences] == [expected]
    assert report.warnings == [f"m1: {expected}"]
    assert f"**m1: {expected}**" in preview.as_markdown(report)


def test_an_ingress_narrowed_or_to_a_known_network_is_no_warning():
    type_ = "aws:ec2/securityGroup:SecurityGroup"
    wide = [{"fromPort": 22, "protocol": "tcp", "cidrBlocks": ["0.0.0.0/0"]}]
    narrow = [{"fromPort": 22, "protocol": "tcp", "cidrBlocks": ["203.0.113.0/24"]}]
    report = report_of(step("update", type_, "m1-sg", {"ingress": wide}, {"ingress": narrow}))
    assert report.warnings == []
    assert [c.text for c in report.machines[0].consequences] == ["ingress widened: 203.0.113.0/24 on 22/tcp"]


def test_a_cloud_vm_replaced_names_what_forces_it():
    type_ = "aws:ec2/instance:Instance"
    report = report_of(step("replace", type_, "m1-instance", {"ami": "a"}, {"ami": "b"}, replaceReasons=["ami"]))
    (machine,) = report.machines
    assert machine.action == "replace"
    assert report.warnings == ["m1: VM replaced (ami changed): containers and volumes on it are lost"]


def test_secret_and_unknown_values_are_never_rendered():
    old = {"sans": [preview.SECRET], "step": "daemon-config"}
    report = report_of(
        step("update", outputs.SERVER_CERTIFICATE.token, "m1-server-cert", old, {"sans": [preview.UNKNOWN]},
             diffReasons=["sans"]),
        step("update", outputs.REMOTE_COMMAND.token, "m1-daemon-config", {"step": "daemon-config", "stdin": "x"},
             {"step": "daemon-config", "stdin": preview.SECRET}, diffReasons=["stdin"]),
    )  # fmt: skip
    for form in preview.FORMATS.values():
        text = form(report)
        assert preview.SECRET not in text and preview.UNKNOWN not in text
        # Neither value is shown: the unknown one is not guessed at, the secret one is only "changed".
        assert "Docker daemon restarts (its configuration changed)" in text
        assert "some steps may run again: what they depend on is known only during up" in text


def test_daemon_restart_names_the_flags_that_changed():
    def script(labels: str) -> str:
        return f"cat > x <<'E'\n[Service]\nExecStart=\nExecStart=/usr/bin/env dockerd -H fd:// {labels}\nE\n"

    old = {"step": "daemon-config", "stdin": script("--label=a=1")}
    new = {"step": "daemon-config", "stdin": script("--label=a=2 --log-level=debug")}
    report = report_of(step("update", outputs.REMOTE_COMMAND.token, "m1-daemon-config", old, new))
    assert [c.text for c in report.machines[0].consequences] == [
        "Docker daemon restarts (engine labels, log level changed)"
    ]


def test_policy_results_are_attributed_to_their_machine_and_mandatory_ones_warn():
    urn = "urn:pulumi:s::docker-machine::dockermachine:index:DockerMachine$pulumi-python:dynamic/qemu:Vm::m1-vm"
    events = [
        {"resourceUrn": urn, "policyName": "docker-context", "policyPackName": "p", "enforcementLevel": "advisory",
         "message": "Machines should have a docker context.\nm1 has none"},
        {"resourceUrn": urn, "policyName": "install-url-https", "policyPackName": "p",
         "enforcementLevel": "mandatory", "message": "Install over https.\nm1: http://x"},
    ]  # fmt: skip
    report = report_of(step("same", QEMU_VM.token, "m1-vm", {}, {}), events=events)
    assert [(p.policy, p.level, p.machine) for p in report.policies] == [
        ("install-url-https", "mandatory", "m1"), ("docker-context", "advisory", "m1"),
    ]  # fmt: skip
    assert report.warnings == ["m1: policy install-url-https (mandatory) failed"]
    markdown = preview.as_markdown(report)
    assert "| `p/install-url-https` | ❌ mandatory | m1 | Install over https. m1: http://x |" in markdown


def test_markdown_stays_under_the_comment_limit_and_says_what_it_cut():
    steps = []
    for i in range(400):
        urn = f"urn:pulumi:s::docker-machine::dockermachine:index:DockerMachine::machine-{i:03}"
        steps.append({"op": "create", "urn": urn, "newState": {"type": outputs.COMPONENT}})
    report = preview.build({"steps": steps}, [], "s", [], False)
    text = preview.as_markdown(report, limit=4000)
    assert len(text) <= 4000
    kept = text.count("| create | new machine |")
    assert 0 < kept < 400
    assert f"_{400 - kept} more machine row(s) cut to fit a comment" in text
    assert len(preview.as_markdown(report)) <= preview.COMMENT_LIMIT


def test_the_json_form_is_versioned_and_complete():
    report = report_of(step("delete", QEMU_VM.token, "m1-vm", {"cpus": 2}, None))
    document = json.loads(preview.as_json(report))
    assert document["version"] == preview.REPORT_VERSION
    assert set(document) == {"version", "stack", "failed", "hasChanges", "changes", "warnings", "machines",
                             "stackConsequences", "policies", "errors"}  # fmt: skip
    assert document["machines"][0]["action"] == "replace"
    assert document["machines"][0]["consequences"] == [
        {"severity": "destructive", "text": "VM destroyed: containers and volumes on it are lost"}
    ]


@pytest.mark.parametrize("case", ["machine-removed", "cpu-memory", "tls-san"])
def test_the_engine_walking_independent_steps_in_another_order_changes_nothing(case):
    with open(os.path.join(GOLDEN, f"{case}.preview.json")) as f:
        captured = json.load(f)
    document = captured["document"]
    reordered = dict(document, steps=list(reversed(document["steps"])))
    args = (captured["policyEvents"], "STACK", captured["errors"], captured["failed"], captured["deployed"])
    assert preview.as_json(preview.build(reordered, *args)) == preview.as_json(load_case(case))


def test_a_machine_removed_from_its_swarm_says_it_is_drained_and_leaves():
    swarm_urn = f"urn:pulumi:s::docker-machine::{outputs.SWARM_COMPONENT}::swarm"

    def swarm_step(stage: str) -> dict:
        type_ = f"{outputs.SWARM_COMPONENT}${outputs.REMOTE_COMMAND.token}"
        urn = f"urn:pulumi:s::docker-machine::{type_}::swarm-m1-{stage}"
        state = {"type": outputs.REMOTE_COMMAND.token, "parent": swarm_urn,
                 "inputs": {"machine": "m1", "step": f"swarm-{stage}"}}  # fmt: skip
        return {"op": "delete", "urn": urn, "oldState": state}

    report = preview.build({"steps": [machine_step("delete"), *(swarm_step(s) for s in ("ready", "join", "remove")),
                                      step("delete", QEMU_VM.token, "m1-vm", {"name": "m1"}, None)]},
                           [], "s", [], False)  # fmt: skip
    (machine,) = report.machines
    assert machine.action == "delete"
    assert [c.text for c in machine.consequences] == [
        "VM destroyed: containers and volumes on it are lost",
        "drained: its swarm tasks move to other nodes",
        "leaves the swarm",
        "node removed from the swarm",
    ]
