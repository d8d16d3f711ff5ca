"""Swarm mode: the config's checks, the steps the program registers (order, secrets, parallel joins), the outputs,
and `scripts/machine ls`/`env --swarm` over them."""

from __future__ import annotations

import json

import pulumi
import pytest

from components import config, outputs
from components.steps import provisioning
from tests.unit.conftest import Program, run_program
from tests.unit.test_graph import SECRET_SIG, plain

# On the stack's private network, so that they reach each other; w2 only by its advertise interface.
PRIVATE = {"private_network": True}
MACHINES = [{"name": "m1", "options": PRIVATE}, {"name": "m2", "options": PRIVATE}, {"name": "w1", "options": PRIVATE},
            {"name": "w2"}]  # fmt: skip
SWARM = {"managers": ["m1", "m2"], "workers": ["w1", "w2"], "advertise": {"w2": "eth1"}}
PRIVATE_IP = "192.168.125.10"
TOKENS = "SWMTKN-1-worker\nSWMTKN-1-manager\n10.10.0.11\n"


@pytest.mark.parametrize(
    ("swarm", "line"),
    [
        ({"workers": ["m1"]}, "swarm.managers: a swarm needs at least one manager (machine names)"),
        ({"managers": []}, "swarm.managers: a swarm needs at least one manager (machine names)"),
        ({"managers": ["m1"], "workers": ["zz"]}, "swarm.workers: unknown machine 'zz'; machines: m1, m2, w1, w2"),
        ({"managers": ["m1"], "workers": ["m1"]},
         "swarm.workers: machine 'm1' is in both managers and workers; a machine has one role"),
        ({"managers": ["m1", "m1"]}, "swarm.managers: machine 'm1' is listed twice; a machine has one role"),
        ({"managers": ["m1"], "advertise": {"w1": "10.0.0.1"}},
         "swarm.advertise: 'w1' is not a member of the swarm; members: m1"),
        ({"managers": ["m1"], "advertise": {"m1": "not an address"}},
         "swarm.advertise: m1: 'not an address' is neither an IP address nor an interface name"),
        ({"managers": ["m1"], "masters": ["m2"]},
         "swarm.masters: unknown setting; allowed: managers, workers, advertise"),
        (["m1"], "swarm: a mapping is wanted, got ['m1']"),
        ({"managers": ["m1"], "workers": ["w2"]},
         "machines[w2].options: swarm members must reach each other, but a QEMU VM in user mode is reachable from "
         "this host only: set private_network: true (or bridge mode); or give swarm.advertise.w2"),
    ],
)  # fmt: skip
def test_a_bad_swarm_is_one_line_naming_the_field(swarm, line):
    with pytest.raises(config.ConfigError) as err:
        config.load(json.dumps(MACHINES), None, json.dumps(swarm))
    lines = str(err.value).splitlines()[1:]
    assert len(lines) == 1 and lines[0].strip().startswith(line), lines


def test_a_bad_swarm_registers_nothing():
    recorded = Program()
    with pytest.raises(pulumi.RunError) as info:
        run_program(MACHINES, config={"swarm": {"managers": ["nobody"]}}, program=recorded)
    assert "swarm.managers: unknown machine 'nobody'" in str(info.value)
    assert recorded.resources == []


def swarm_program():
    overrides = {"remote:Command": {"stdout": TOKENS}, "qemu:Vm": {"private_ip": PRIVATE_IP}}
    return run_program(MACHINES, config={"swarm": SWARM}, overrides=overrides)


def test_the_first_manager_initialises_and_every_other_member_joins_after_the_tokens():
    program = swarm_program()
    steps = {r.name: r for r in program.of_type(outputs.REMOTE_COMMAND.token)}
    init, tokens = steps["swarm-init"], steps["swarm-tokens"]
    # A manager advertises its private address, never the 127.0.0.1 its Docker client dials.
    assert init.inputs["machine"] == "m1" and f"--advertise-addr {PRIVATE_IP}" in init.inputs["stdin"]
    assert init.urn in tokens.dependencies
    for member, role in (("m2", "manager"), ("w1", "worker"), ("w2", "worker")):
        remove, join, ready = (steps[f"swarm-{member}-{s}"] for s in ("remove", "join", "ready"))
        assert join.inputs["machine"] == member and join.inputs["step"] == "swarm-join"
        token = "SWMTKN-1-manager" if role == "manager" else "SWMTKN-1-worker"
        assert SECRET_SIG in join.inputs["stdin"]  # it holds the token
        assert token in plain(join.inputs["stdin"]) and "10.10.0.11:2377" in plain(join.inputs["stdin"])
        # Created remove → join → ready, so deleted ready (drain) → join (leave) → remove (node rm).
        assert remove.urn in join.dependencies and join.urn in ready.dependencies
        member_check = program.named(f"{member}-docker-check").urn
        assert member_check in join.dependencies
        # Members join in parallel: no join waits for another member's.
        others = [o for o in ("m2", "w1", "w2") if o != member]
        assert not any(f"swarm-{other}-" in dep for dep in join.dependencies for other in others)
        assert "docker node rm" in remove.inputs["delete"] and "--availability drain" in ready.inputs["delete"]
        assert "swarm leave --force" in join.inputs["delete"]
    assert "--advertise-addr eth1" in plain(steps["swarm-w2-join"].inputs["stdin"])


def test_join_tokens_are_secrets_and_the_outputs_name_the_cluster():
    program = swarm_program()
    swarm = outputs.SwarmOutputs.model_validate(program.outputs["swarm"])
    assert swarm == outputs.SwarmOutputs(managers=["m1", "m2"], workers=["w1", "w2"], manager_address="10.10.0.11:2377")
    assert program.outputs["swarmJoinTokens"] == {"worker": "SWMTKN-1-worker", "manager": "SWMTKN-1-manager"}
    parsed = outputs.StackOutputs.model_validate(program.outputs)
    assert parsed.swarm.role("w1") == "worker" and parsed.swarm.role("m1") == "manager"


def test_every_script_checks_before_it_changes_so_a_second_up_changes_nothing():
    init = provisioning.swarm_init_script("10.0.0.1")
    assert init.index("LocalNodeState") < init.index("docker swarm init")
    join = provisioning.swarm_join_script("worker", "TOKEN", "10.0.0.1", "10.0.0.2")
    assert join.index('if [ "$state" != active ]') < join.index("docker swarm join")
    # The token is in the script (a secret stdin), never on the SSH command line.
    assert "TOKEN" in join and "'TOKEN'" not in join
    for script in (provisioning.swarm_drain_script("w1"), provisioning.swarm_remove_script("w1"),
                   provisioning.SWARM_LEAVE):  # fmt: skip
        assert "timeout" in script  # a swarm without quorum never hangs a destroy


def test_stacks_without_a_swarm_export_none_of_its_outputs():
    program = run_program(MACHINES[:1])
    assert "swarm" not in program.outputs and "swarmJoinTokens" not in program.outputs
