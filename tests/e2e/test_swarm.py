"""Issue 14: a swarm-mode cluster of two local VMs from one `up`, on the stack's private network (no root).

One stack for the whole module (boots are minutes under TCG): one `up` boots both VMs side by side and builds the
swarm; the VMs reach each other at their leased addresses; a service spreads over both nodes; a second `up` has
nothing to do; removing the worker drains it, makes it leave and removes the node; destroy leaves nothing behind.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import shutil
import subprocess
import time

import pytest

from components.drivers._local.process import alive, read_pid
from tests.e2e.conftest import (
    have_tools,
    new_stack,
    processes_matching,
    qemu_processes_for,
    record_figure,
    remove_stack,
    rewrite_machines,
)  # fmt: skip

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(not have_tools(), reason="needs qemu, docker and curl (make setup)")]

MANAGER, WORKER = "swarm-a", "swarm-b"
NAMES = (MANAGER, WORKER)
SWARM = {"managers": [MANAGER], "workers": [WORKER]}
BUSYBOX = 'FROM scratch\nCOPY busybox /bin/busybox\nENTRYPOINT ["/bin/busybox"]\n'
SERVICE = "e2e-spread"


def member(name: str) -> dict:
    return {
        "name": name,
        "driver": "qemu",
        "options": {"private_network": True},
        "engine": {"install": "packages"},
        "docker_context": False,
    }


def resources(stack) -> dict[str, dict]:
    """The stack's resources by name, as the engine recorded them (outputs and timestamps)."""
    state = json.loads(stack.pulumi("stack", "export", "--show-secrets").stdout)
    return {r["urn"].rsplit("::", 1)[-1]: r for r in state["deployment"].get("resources", [])}


def when(stamp: str) -> float:
    return datetime.datetime.fromisoformat(stamp[:26].rstrip("Z") + "+00:00").timestamp()


def on(stack, name: str, command: str) -> str:
    return stack.machine("--stack", stack.name, "ssh", name, command).stdout


def docker(stack, name: str, *args: str, swarm: bool = False) -> str:
    """The real docker client over TLS, pointed by `scripts/machine env [--swarm] NAME`."""
    env = dict(stack.env, DOCKER_BUILDKIT="0")
    for line in stack.machine("--stack", stack.name, "env", name, *(["--swarm"] if swarm else [])).stdout.splitlines():
        if line.startswith("export "):
            key, value = line[len("export ") :].split("=", 1)
            env[key] = value.strip('"')
    result = subprocess.run(["docker", *args], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"docker {' '.join(args)}: {result.stderr}"
    return result.stdout


def nodes(stack) -> list[tuple[str, str, str]]:
    """`docker node ls` on the manager, reached through a worker's `env --swarm`: (hostname, status, availability)."""
    out = docker(stack, MANAGER, "node", "ls", "--format", "{{.Hostname}} {{.Status}} {{.Availability}}", swarm=True)
    return sorted(tuple(line.split()) for line in out.splitlines())


def links() -> set[str]:
    out = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    return {line.split(":")[1].strip() for line in out.splitlines()}


@pytest.fixture(scope="module")
def cluster(e2e_env, tmp_path_factory):
    """The swarm's stack after its one `up`: (stack, private network directory, up seconds)."""
    devices = links()
    stack = new_stack(e2e_env, "swarm", None)
    rewrite_machines(stack, [member(name) for name in NAMES], swarm=SWARM)
    state_dir = os.path.join(stack.state_dir, f"docker-machine-{stack.name}")
    network = os.path.join(state_dir, "l2")
    started = time.monotonic()
    try:
        stack.pulumi("up", "--yes", "--skip-preview", timeout=2400)
        yield stack, network, time.monotonic() - started
        started = time.monotonic()
        stack.pulumi("destroy", "--yes", timeout=900)
        record_figure("swarm_destroy_seconds", round(time.monotonic() - started, 1))
        # Nothing survives: VMs, the hub, its socket and leases, the VMs' sockets and files, network devices.
        assert [line for name in NAMES for line in qemu_processes_for(os.path.join(state_dir, "qemu", name))] == []
        assert processes_matching(f"components.drivers.qemu.hub {network}") == []
        assert not os.path.exists(network)
        assert [os.path.join(d, f) for d, _, files in os.walk(state_dir) for f in files] == []
        assert links() == devices
    finally:
        if any(qemu_processes_for(os.path.join(state_dir, "qemu", name)) for name in NAMES):
            stack.pulumi("destroy", "--yes", check=False, timeout=900)
        remove_stack(stack)
        for name in NAMES:
            shutil.rmtree(os.path.expanduser(f"~/.docker/machine/machines/{name}"), ignore_errors=True)


def test_one_up_boots_both_vms_side_by_side_and_builds_the_swarm(cluster):
    stack, _, seconds = cluster
    found = resources(stack)
    boots = {}
    for name in NAMES:
        # The engine's timestamps: the VM resource is created once qemu runs, wait-for-ssh once SSH answers.
        boots[name] = (when(found[f"{name}-vm"]["created"]), when(found[f"{name}-wait-for-ssh"]["created"]))
    overlap = min(end for _, end in boots.values()) - max(start for start, _ in boots.values())
    assert overlap > 0, boots
    assert nodes(stack) == [(MANAGER, "Ready", "Active"), (WORKER, "Ready", "Active")]
    ls = stack.machine("--stack", stack.name, "ls", "--format", "{{.Name}} {{.Swarm}}").stdout.split("\n")
    assert f"{MANAGER} {MANAGER} (master)" in ls and f"{WORKER} {MANAGER}" in ls, ls
    record_figure("swarm_up_seconds", round(seconds, 1))
    record_figure("swarm_boot_seconds", {n: round(end - start, 1) for n, (start, end) in boots.items()})
    record_figure("swarm_boot_overlap_seconds", round(overlap, 1))


def test_the_swarm_advertises_the_leased_addresses_configured_in_the_guests(cluster):
    stack, network, _ = cluster
    outs = stack.outputs()
    machines, found = outs["machines"], resources(stack)
    leases = {name: open(os.path.join(network, "leases", name)).read() for name in os.listdir(
        os.path.join(network, "leases"))}  # fmt: skip
    for name in NAMES:
        address = machines[name]["privateIp"]
        vm = found[f"{name}-vm"]["outputs"]
        assert address == vm["private_ip"]
        assert leases[address] == os.path.join(vm["instance_dir"], "l2.sock")  # the lease names the VM's NIC socket
        # In the guest: the NIC with the private MAC holds the address; the default route stays on user mode.
        nic = on(stack, name, f"ip -o link | grep -i {vm['private_mac']} | cut -d: -f2").strip()
        assert f"inet {address}/24 " in on(stack, name, f"ip -4 -o addr show dev {nic}")
        assert "via 10.0.2.2" in on(stack, name, "ip route show default")
        addr = docker(stack, name, "info", "--format", "{{.Swarm.NodeAddr}}").strip()
        assert addr == address
    assert outs["swarm"]["managerAddress"] == f"{machines[MANAGER]['privateIp']}:2377"
    record_figure("swarm_private_addresses", {n: machines[n]["privateIp"] for n in NAMES})


def test_both_machines_come_from_one_template_each_with_its_own_identity(cluster):
    """Issue 20: resumed from one booted template, yet every identity is each machine's own, its clock the host's."""
    stack, _, _ = cluster
    found, machines = resources(stack), stack.outputs()["machines"]
    made_from = {found[f"{name}-vm"]["outputs"].get("template") for name in NAMES}
    assert len(made_from) == 1 and None not in made_from, made_from
    identity = {}
    for name in NAMES:
        before = time.time()
        guest_clock = float(on(stack, name, "date +%s.%N"))
        after = time.time()
        # The host's clock on both sides of the ssh round trip: the guest's must fall in between, give or take 2 s.
        assert before - 2 <= guest_clock <= after + 2, (name, before, guest_clock, after)
        identity[name] = (
            machines[name]["ssh"]["hostKey"],
            on(stack, name, "cat /etc/machine-id").strip(),
            on(stack, name, "hostname").strip(),
            docker(stack, name, "info", "--format", "{{.ID}}").strip(),
            docker(stack, name, "info", "--format", "{{.Swarm.NodeID}}").strip(),
        )
        assert identity[name][2] == name
    for a, b in zip(identity[MANAGER], identity[WORKER], strict=True):
        assert a and b and a != b, identity
    record_figure("template: the swarm's machines resumed from", made_from.pop())


def test_the_join_tokens_are_secrets_in_the_state_and_outputs(cluster):
    stack, _, _ = cluster
    tokens = stack.outputs()["swarmJoinTokens"]
    assert tokens["worker"].startswith("SWMTKN-1-") and tokens["manager"].startswith("SWMTKN-1-")
    state = stack.pulumi("stack", "export").stdout
    plain = stack.pulumi("stack", "output", "--json").stdout
    assert "SWMTKN" not in state and "SWMTKN" not in plain
    assert json.loads(plain)["swarmJoinTokens"] == "[secret]"


def test_each_machine_pings_the_other(cluster):
    stack, _, _ = cluster
    machines = stack.outputs()["machines"]
    results = {}
    for name, other in (NAMES, NAMES[::-1]):
        # As root: the image's ping has no raw-socket capability for the login user.
        out = on(stack, name, f"sudo ping -c 3 -W 5 {machines[other]['privateIp']}")
        sent, received = map(int, re.search(r"(\d+) packets transmitted, (\d+) received", out).groups())
        assert (sent, received) == (3, 3), out
        results[f"{name} -> {other}"] = re.search(r"rtt [^\n]*", out).group(0)
    record_figure("swarm_ping", results)


def test_tcp_carries_a_bulk_transfer_across_the_hub(cluster):
    """16 MiB from the worker to the manager over their private addresses, all of it, and how fast."""
    stack, _, _ = cluster
    b = stack.outputs()["machines"][WORKER]["privateIp"]
    size = 16 << 20
    server = (f"import socket; s = socket.create_server(('{b}', 9999)); c, _ = s.accept(); "
              f"c.sendall(bytes({size})); c.close()")  # fmt: skip
    listening = "for i in $(seq 100); do ss -ltn | grep -q ':9999 ' && break; sleep 0.2; done"
    on(stack, WORKER, f'nohup python3 -c "{server}" >/dev/null 2>&1 </dev/null & {listening}')
    out = on(stack, MANAGER, f"s=$(date +%s.%N); wc -c < /dev/tcp/{b}/9999; date +%s.%N; echo $s")
    received, end, start = out.split()
    assert int(received) == size
    record_figure("swarm_private_network_tcp_mib_per_second", round(16 / (float(end) - float(start)), 1))


def test_a_service_of_two_replicas_spreads_over_both_nodes(cluster, tmp_path):
    stack, _, _ = cluster
    shutil.copy("/bin/busybox", tmp_path / "busybox")
    (tmp_path / "Dockerfile").write_text(BUSYBOX)
    for name in NAMES:  # no registry here: each node builds the image
        docker(stack, name, "build", "-q", "-t", "e2e/busybox", str(tmp_path))
    started = time.monotonic()
    docker(stack, MANAGER, "service", "create", "--quiet", "--name", SERVICE, "--replicas", "2", "--no-resolve-image",
           "--stop-grace-period", "1s", "e2e/busybox", "sleep", "86400")  # fmt: skip
    record_figure("swarm_service_converged_seconds", round(time.monotonic() - started, 1))
    tasks = docker(stack, MANAGER, "service", "ps", SERVICE, "--filter", "desired-state=running",
                   "--format", "{{.Node}} {{.CurrentState}}").splitlines()  # fmt: skip
    assert sorted(line.split()[0] for line in tasks) == sorted(NAMES), tasks
    assert all(line.split()[1] == "Running" for line in tasks), tasks
    record_figure("swarm_service_tasks", tasks)


def test_a_second_up_changes_nothing(cluster):
    stack, _, _ = cluster
    result = stack.machine("--stack", stack.name, "preview", "--expect-no-changes", "--format", "json", check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(result.stdout)["hasChanges"] is False


def test_removing_the_worker_drains_it_removes_the_node_and_keeps_the_manager(cluster):
    stack, network, _ = cluster
    before = stack.outputs()["machines"]
    manager_vm = resources(stack)[f"{MANAGER}-vm"]["outputs"]
    hub = read_pid(os.path.join(network, "hub.pid"))
    rewrite_machines(stack, [member(MANAGER)], swarm={"managers": [MANAGER]})
    review = stack.machine("--stack", stack.name, "preview", "--format", "json", check=False)
    assert review.returncode == 0, review.stderr
    worker = next(m for m in json.loads(review.stdout)["machines"] if m["name"] == WORKER)
    said = [c["text"] for c in worker["consequences"]]
    assert worker["action"] == "delete"
    assert any("drained" in text for text in said) and "leaves the swarm" in said, said
    started = time.monotonic()
    stack.pulumi("up", "--yes", "--skip-preview", timeout=900)
    record_figure("swarm_remove_worker_seconds", round(time.monotonic() - started, 1))
    assert nodes(stack) == [(MANAGER, "Ready", "Active")]
    # Drained before it left: both replicas now run on the manager.
    tasks = docker(stack, MANAGER, "service", "ps", SERVICE, "--filter", "desired-state=running",
                   "--format", "{{.Node}} {{.CurrentState}}").splitlines()  # fmt: skip
    assert [line.split()[:2] for line in tasks] == [[MANAGER, "Running"]] * 2, tasks
    after = stack.outputs()
    assert set(after["machines"]) == {MANAGER} and after["swarm"]["workers"] == []
    assert after["machines"][MANAGER]["privateIp"] == before[MANAGER]["privateIp"]
    manager_after = resources(stack)[f"{MANAGER}-vm"]["outputs"]
    assert (manager_after["pid"], manager_after["boot"]) == (manager_vm["pid"], manager_vm["boot"])  # not restarted
    assert os.listdir(os.path.join(network, "leases")) == [before[MANAGER]["privateIp"]]
    assert alive(hub) and read_pid(os.path.join(network, "hub.pid")) == hub
    assert qemu_processes_for(os.path.join(stack.state_dir, f"docker-machine-{stack.name}", "qemu", WORKER)) == []
