"""Docker hosts from stack config: one DockerMachine per entry of `docker-machine:machines`."""

import getpass
import os

import pulumi

from components import config, outputs, ownership, policy_settings
from components.drivers._local.paths import stack_state_dir
from components.machine import DockerMachine, DockerMachineArgs
from components.steps.tls import CertificateAuthority
from components.swarm import SwarmCluster

try:
    settings = pulumi.Config()
    # Shape, types, driver options and host prerequisites (plugins, VirtualBox…), before any resource exists.
    stack_config = config.load(settings.get("machines"), settings.get("ca_rotation"), settings.get("swarm"))
    # The policy pack's settings (docs/policy.md) are refused here too, so that a typo fails without the pack.
    policy_settings.load(settings.get("policy"), secret=pulumi.runtime.is_config_secret(policy_settings.KEY))
except config.ConfigError as err:
    # One clear message; RunError prints no traceback.
    raise pulumi.RunError(str(err)) from None

try:
    owner = getpass.getuser()
except (KeyError, OSError):
    owner = "unknown"

project, stack = pulumi.get_project(), pulumi.get_stack()
authority = CertificateAuthority(f"{stack}-tls", owner=owner, rotation=stack_config.ca_rotation)
state_dir = stack_state_dir(project, stack)
stack_owner = ownership.current(project, stack)
machines = {
    m.name: DockerMachine(
        m.name,
        DockerMachineArgs(machine=m, authority=authority, owner=owner, state_dir=state_dir, project_dir=os.getcwd(),
                          stack_owner=stack_owner),
    )
    for m in stack_config.machines
}

names = outputs.OUTPUT_NAMES
pulumi.export(names["ca_cert"], authority.ca_cert)
pulumi.export(names["client_cert"], authority.client_cert)
pulumi.export(names["client_key"], authority.client_key)
pulumi.export(names["machines"], {name: m.outputs for name, m in machines.items()})
pulumi.export(names["ssh_private_keys"], {name: m.ssh_private_key for name, m in machines.items()})
if stack_config.swarm:
    swarm = SwarmCluster("swarm", stack_config.swarm, machines)
    pulumi.export(names["swarm"], swarm.outputs)
    pulumi.export(names["swarm_join_tokens"], swarm.join_tokens)
