"""DockerMachine: "a host reachable over SSH" → "a Docker daemon the client reaches over mutual TLS"."""

from __future__ import annotations

import os
from dataclasses import dataclass

import pulumi

from components import drivers, provisioning
from components.config import MachineConfig
from components.dockerapi import DockerApiCheck
from components.dockercontext import DockerContext
from components.remote import RemoteCommand
from components.tls import CertificateAuthority, ServerCertificate, SshKey, server_sans

TYPE_TOKEN = "dockermachine:index:DockerMachine"


@dataclass(frozen=True)
class DockerMachineArgs:
    machine: MachineConfig
    authority: CertificateAuthority
    # Organization in certificate subjects, docker-machine's $USER.
    owner: str
    # Where driver state lives on this host (QEMU disks, sockets), unique per project/stack.
    state_dir: str


def docker_cert_path(name: str) -> str:
    """docker-machine's DOCKER_CERT_PATH for a machine."""
    return os.path.join(os.path.expanduser("~"), ".docker", "machine", "machines", name)


class DockerMachine(pulumi.ComponentResource):
    name: pulumi.Output[str]
    driver: pulumi.Output[str]
    ip: pulumi.Output[str]
    port: pulumi.Output[int]
    url: pulumi.Output[str]
    env: pulumi.Output[dict]
    ssh_host: pulumi.Output[str]
    ssh_port: pulumi.Output[int]
    ssh_user: pulumi.Output[str]
    ssh_private_key: pulumi.Output[str]
    docker_version: pulumi.Output[str]

    def __init__(self, name: str, args: DockerMachineArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__(TYPE_TOKEN, name, None, opts)
        machine, engine = args.machine, args.machine.engine
        child = pulumi.ResourceOptions(parent=self)

        ssh_key = SshKey(f"{name}-ssh-key", opts=child)
        host = drivers.load(machine.driver).create_host(name, machine, ssh_key, args.state_dir, child)

        connection = pulumi.Output.secret({
            "host": host.ssh_host,
            "port": host.ssh_port,
            "user": host.ssh_user,
            "private_key": host.ssh_private_key,
            "dial_error_limit": host.dial_error_limit,
            "per_dial_timeout": 10,
        })

        def step(stage: str, script: pulumi.Input[str], after: pulumi.Resource | None, **kwargs) -> RemoteCommand:
            return RemoteCommand(
                f"{name}-{stage}",
                connection=connection,
                create=provisioning.AS_ROOT,
                stdin=script,
                opts=pulumi.ResourceOptions(
                    parent=self,
                    depends_on=[after] if after else [],
                    custom_timeouts=pulumi.CustomTimeouts(create="30m", update="30m"),
                ),
                **kwargs,
            )

        booted = step("wait-for-ssh", provisioning.WAIT_FOR_BOOT, host.ready)
        installed = step("install-docker", provisioning.install_script(engine), booted)

        sans = pulumi.Output.from_input(host.address).apply(lambda address: server_sans(address, machine.tls_san))
        server_cert = ServerCertificate(
            f"{name}-server-cert", args.authority, f"{args.owner}.{name}", sans, machine.tls_rotation, opts=child
        )
        tls_files = step(
            "tls",
            pulumi.Output.secret(
                pulumi.Output.all(args.authority.ca_cert, server_cert.cert, server_cert.key).apply(
                    lambda v: provisioning.tls_script(*v)
                )
            ),
            installed,
        )
        daemon_script = server_cert.serial.apply(
            lambda serial: provisioning.daemon_script(engine, machine.driver, serial)
        )
        daemon = step(
            "daemon-config",
            daemon_script,
            tls_files,
            delete=provisioning.as_root_inline(provisioning.UNDO_DAEMON) if host.undo_on_delete else None,
        )

        verified = DockerApiCheck(
            f"{name}-docker-check",
            host=host.address,
            port=host.engine_port,
            ca_cert=args.authority.ca_cert,
            client_cert=args.authority.client_cert,
            client_key=args.authority.client_key,
            configuration=daemon_script.apply(lambda s: provisioning.digest(s)),
            running=machine.state == "running",
            opts=pulumi.ResourceOptions(parent=self, depends_on=[daemon]),
        )

        self.name = pulumi.Output.from_input(machine.name)
        self.driver = pulumi.Output.from_input(machine.driver)
        self.ip = pulumi.Output.from_input(host.address)
        # Ports travel through the engine as numbers that may come back as floats.
        self.port = pulumi.Output.from_input(host.engine_port).apply(int)
        self.url = pulumi.Output.format("tcp://{0}:{1}", host.address, self.port)
        self.env = self.url.apply(
            lambda url: {
                "DOCKER_TLS_VERIFY": "1",
                "DOCKER_HOST": url,
                "DOCKER_CERT_PATH": docker_cert_path(machine.name),
                "DOCKER_MACHINE_NAME": machine.name,
            }
        )
        if machine.docker_context:
            DockerContext(
                f"{name}-docker-context",
                machine_name=machine.name,
                url=self.url,
                ca_cert=args.authority.ca_cert,
                client_cert=args.authority.client_cert,
                client_key=args.authority.client_key,
                opts=pulumi.ResourceOptions(parent=self, depends_on=[verified]),
            )
        self.ssh_host = pulumi.Output.from_input(host.ssh_host)
        self.ssh_port = pulumi.Output.from_input(host.ssh_port).apply(int)
        self.ssh_user = pulumi.Output.from_input(host.ssh_user)
        # The key that really logs in: a driver may use the user's own key (ssh_key / ssh_key_path).
        self.ssh_private_key = pulumi.Output.secret(host.ssh_private_key)
        self.server_cert_serial = server_cert.serial
        self.docker_version = verified.server_version
        self.register_outputs(
            {
                "url": self.url,
                "ip": self.ip,
                "docker_version": self.docker_version,
                "server_cert_serial": self.server_cert_serial,
            }
        )
