"""SwarmCluster: one swarm-mode cluster over a stack's machines, through the same remote steps as provisioning.

The first manager initialises the swarm and gives out the join tokens (a secret output). Every other member then
has three steps, created in this order and deleted in the reverse one, which is what removing a member needs:

* ``<m>-remove`` on the first manager: nothing on create; on delete, after the node left, ``docker node rm``;
* ``<m>-join`` on the member: ``docker swarm join`` unless already a member; on delete, ``docker swarm leave``;
* ``<m>-ready`` on the first manager: waits until the node is Ready; on delete, drains (and demotes) it first.

Members join in parallel: each depends only on the tokens and on its own machine. Delete commands are bounded in
time (provisioning.SWARM_TIMEOUT) so that a destroy never hangs on a swarm that lost its quorum.
"""

from __future__ import annotations

import pulumi

from components import outputs
from components.machine import DockerMachine
from components.model import SwarmConfig
from components.steps import names, provisioning
from components.steps.remote import RemoteCommand


class SwarmCluster(pulumi.ComponentResource):
    # swarm of the stack outputs (components.outputs.SwarmOutputs): members and manager addresses.
    outputs: pulumi.Output[dict]
    # swarmJoinTokens: {"worker": …, "manager": …}, a secret.
    join_tokens: pulumi.Output[dict]

    def __init__(self, name: str, swarm: SwarmConfig, machines: dict[str, DockerMachine],
                 opts: pulumi.ResourceOptions | None = None):  # fmt: skip
        super().__init__(outputs.SWARM_COMPONENT, name, None, opts)
        first_name = swarm.managers[0]
        first = machines[first_name]

        def step(kind: str, on: DockerMachine, machine: str, stdin: pulumi.Input[str], after: list,
                 delete: str | None = None) -> RemoteCommand:  # fmt: skip
            # The cluster-wide steps are <swarm>-init and <swarm>-tokens; a member's <swarm>-<machine>-join and so on.
            member = "" if kind in (names.SWARM_INIT, names.SWARM_TOKENS) else f"{machine}-"
            return RemoteCommand(
                f"{name}-{member}{kind.removeprefix('swarm-')}", connection=on.connection, create=provisioning.AS_ROOT,
                stdin=stdin, delete=provisioning.as_root_inline(delete) if delete else None, machine=machine,
                step=kind, opts=pulumi.ResourceOptions(parent=self, depends_on=after),
            )  # fmt: skip

        def advertise(machine: str) -> pulumi.Output[str]:
            if machine in swarm.advertise:
                return pulumi.Output.from_input(swarm.advertise[machine])
            member = machines[machine]
            return member.private_address if member.private_address is not None else member.address

        init = step(names.SWARM_INIT, first, first_name, advertise(first_name).apply(provisioning.swarm_init_script),
                    [first.ready], delete=provisioning.SWARM_LEAVE)  # fmt: skip
        # Keyed on the init step's ID: a new swarm (init replaced) hands out new tokens.
        tokens = step(names.SWARM_TOKENS, first, first_name,
                      pulumi.Output.concat("# swarm ", init.id, "\n", provisioning.SWARM_TOKENS), [init])  # fmt: skip
        lines = tokens.stdout.apply(lambda out: (out or "").split())
        for machine, role in swarm.members:
            member = machines[machine]
            remove = step(names.SWARM_REMOVE, first, machine, f"# {machine} leaves the swarm on delete\ntrue\n",
                          [init], delete=provisioning.swarm_remove_script(machine))  # fmt: skip
            script = pulumi.Output.all(lines, advertise(machine)).apply(
                lambda v, role=role: provisioning.swarm_join_script(
                    role, v[0][0 if role == "worker" else 1], v[0][2], v[1]
                )
            )
            join = step(names.SWARM_JOIN, member, machine, pulumi.Output.secret(script), [member.ready, remove],
                        delete=provisioning.SWARM_LEAVE)  # fmt: skip
            # The node ID is no secret; the join's stdout is one only because every step's stdout is.
            node_id = pulumi.Output.unsecret(join.stdout).apply(lambda out: (out or "").strip())
            step(names.SWARM_READY, first, machine,
                 node_id.apply(lambda n, m=machine, r=role: provisioning.swarm_ready_script(m, r, n)), [join],
                 delete=provisioning.swarm_drain_script(machine))  # fmt: skip

        manager_address = pulumi.Output.unsecret(lines.apply(lambda v: v[2] if len(v) > 2 else ""))
        self.outputs = manager_address.apply(
            lambda address: outputs.SwarmOutputs(
                managers=list(swarm.managers),
                workers=list(swarm.workers),
                manager_address=f"{address}:{provisioning.SWARM_PORT}" if address else "",
            ).model_dump(by_alias=True)
        )
        self.join_tokens = pulumi.Output.secret(
            lines.apply(lambda v: {"worker": v[0], "manager": v[1]} if len(v) > 1 else {})
        )
        self.register_outputs({"outputs": self.outputs, "join_tokens": self.join_tokens})
