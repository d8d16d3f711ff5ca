"""provision, regenerate-certs and upgrade: re-running provisioning steps, new certificates, a newer Docker."""

from __future__ import annotations

import os

from components import outputs
from components.steps import dockercontext, provisioning

from . import power, probe, sshclient, ui, workspace
from .errors import MachineError
from .machines import Registry, by_stack, machine_resources, rotation_token, set_machine_setting, targets


def provision(reg: Registry, names: list[str] | None) -> None:
    """Re-run each machine's provisioning steps: a targeted ``up`` replacing them."""
    machines = reg.resolve(names)
    probe.require_running(machines)
    ws = workspace.get()
    for stack, group in by_stack(machines).items():
        resources = ws.resources(stack)
        replace = []
        for m in group:
            part = machine_resources(stack, m.name, resources)
            for step in part.of_type(outputs.REMOTE_COMMAND.token):
                # Replacing runs the new step before deleting the old one: a step whose delete undoes it (generic
                # hosts) would undo what was just done.
                if (step.get("outputs") or {}).get("delete") or (step.get("inputs") or {}).get("delete"):
                    ui.warn(f"{step['urn'].rsplit('::', 1)[-1]}: not re-run (its delete would undo it)")
                    continue
                replace.append(step["urn"])
            replace += [r["urn"] for r in part.of_type(outputs.API_CHECK.token)]
        for m in group:
            ui.info(f'Provisioning "{m.name}"...')
        ws.up(stack, targets(stack, group), replace=replace, title="Provisioning " + ", ".join(m.name for m in group))
    for m in machines:
        ui.info(f'Machine "{m.name}" was provisioned.')


def refresh_local_material(stack: str) -> None:
    """After the stack's CA changed: rewrite the cert copies and the docker contexts this host has."""
    for m in Registry(stack).machines():
        if os.path.isdir(m.cert_path):
            m.write_client_certs()
        name = dockercontext.context_name(m.name)
        if dockercontext.docker_path() and dockercontext.ours(dockercontext.description_of(name), m.name, m.owner):
            try:
                dockercontext.upsert(name, m.name, m.url, m.cert_path, m.owner)
            except dockercontext.DockerContextError as err:
                ui.warn(str(err))


def regenerate_certs(reg: Registry, names: list[str] | None, force: bool, client_certs: bool) -> None:
    """New server certificates (``tls_rotation``), or with ``client_certs`` a new CA and client certificate for the
    whole stack (``ca_rotation``); each restarts Docker."""
    machines = reg.resolve(names)
    affected = [m for m in reg.machines() if m.stack in {x.stack for x in machines}] if client_certs else machines
    probe.require_running(affected)
    if not force and not ui.confirm("Regenerate TLS machine certs?  Warning: this is irreversible."):
        return
    ui.info("Regenerating TLS certificates")
    ws = workspace.get()
    for stack, group in by_stack(machines).items():
        token = rotation_token()
        for m in group:
            set_machine_setting(stack, m.name, "tls_rotation", token)
        if client_certs:
            ui.info("Regenerating local certificates")
            ws.set_config(stack, "ca_rotation", token)
            ws.up(stack, None, title=f"Regenerating the certificates of stack {stack}")
            refresh_local_material(stack)
        else:
            ws.up(stack, targets(stack, group), title="Regenerating " + ", ".join(m.name for m in group))


def upgrade(reg: Registry, names: list[str] | None) -> None:
    """docker-machine's upgrade: start the machine if needed, upgrade the installed Docker packages, restart."""
    machines = reg.resolve(names)
    power.start_stopped(reg, machines)
    for machine in machines:
        ui.info(f'Upgrading docker on "{machine.name}"...')
        result = sshclient.ssh_run(machine, provisioning.UPGRADE)
        if result.returncode != 0:
            detail = (result.stderr.strip() or result.stdout.strip())[-2000:]
            raise MachineError(f'upgrading Docker on "{machine.name}" failed: {detail}')
        ui.info("Restarting docker...")
    power.wait_for_docker(machines)
    for machine in machines:
        ui.info(f'Docker on "{machine.name}" is now {probe.remote_version(machine)}')
