"""Docker hosts from stack config: one DockerMachine per entry of `docker-machine:machines`."""

import getpass
import os

import pulumi

from components import config, drivers
from components.drivers.qemu import state_root
from components.machine import DockerMachine, DockerMachineArgs
from components.tls import CertificateAuthority

try:
    settings = pulumi.Config()
    stack_config = config.parse(settings.require_object("machines"), settings.get("ca_rotation") or "")
    # Host prerequisites of the drivers in use (VirtualBox and its Python API...), before any resource exists.
    for driver_name in sorted({m.driver for m in stack_config.machines}):
        check_host = getattr(drivers.load(driver_name), "check_host", None)
        if check_host is not None:
            check_host([m for m in stack_config.machines if m.driver == driver_name])
except config.ConfigError as err:
    # One clear message, before any resource is registered; RunError prints no traceback.
    raise pulumi.RunError(str(err)) from None

try:
    owner = getpass.getuser()
except (KeyError, OSError):
    owner = "unknown"

project, stack = pulumi.get_project(), pulumi.get_stack()
authority = CertificateAuthority(f"{stack}-tls", owner=owner, rotation=stack_config.ca_rotation)
state_dir = os.path.join(state_root(), f"{project}-{stack}")

machines = {
    m.name: DockerMachine(m.name, DockerMachineArgs(machine=m, authority=authority, owner=owner, state_dir=state_dir))
    for m in stack_config.machines
}

pulumi.export("caCert", authority.ca_cert)
pulumi.export("clientCert", authority.client_cert)
pulumi.export("clientKey", authority.client_key)
pulumi.export(
    "machines",
    {
        name: {
            "name": m.name,
            "driver": m.driver,
            "ip": m.ip,
            "port": m.port,
            "url": m.url,
            "env": m.env,
            "ssh": {"host": m.ssh_host, "port": m.ssh_port, "user": m.ssh_user},
            "dockerVersion": m.docker_version,
            "serverCertSerial": m.server_cert_serial,
        }
        for name, m in machines.items()
    },
)
pulumi.export("sshPrivateKeys", {name: m.ssh_private_key for name, m in machines.items()})
