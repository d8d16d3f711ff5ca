"""DockerMachine: "a host reachable over SSH" → "a Docker daemon the client reaches over mutual TLS"."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi

from components import drivers, outputs, ownership
from components.drivers.base import Docker, DriverContext, Host
from components.model import EngineOptions, MachineConfig
from components.steps import hostenv, names, provisioning
from components.steps.dockerapi import DockerApiCheck
from components.steps.dockercontext import DockerContext
from components.steps.remote import RemoteCommand
from components.steps.tls import CertificateAuthority, ServerCertificate, SshKey, server_sans


@dataclass(frozen=True)
class DockerMachineArgs:
    machine: MachineConfig
    authority: CertificateAuthority
    # Organization in certificate subjects, docker-machine's $USER.
    owner: str
    # Where driver state lives on this host (QEMU disks, sockets), unique per project/stack.
    state_dir: str
    # The project directory (drivers find scripts/build-image there).
    project_dir: str
    # The stack (of its backend) that owns what is left on this host: instance directories, cert copies, contexts.
    stack_owner: ownership.Owner


class DockerMachine(pulumi.ComponentResource):
    """One machine: the driver's host, then wait → install → TLS → daemon → API check → docker context."""

    # machines.<name> of the stack outputs (components.outputs.MachineOutputs, camelCase).
    outputs: pulumi.Output[dict]
    url: pulumi.Output[str]
    docker_version: pulumi.Output[str]
    server_cert_serial: pulumi.Output[str]
    # The key that really logs in (a driver may use the user's own key): a secret.
    ssh_private_key: pulumi.Output[str]
    # Where the stack's other machines reach this one (drivers/base.Host.private_address); None if the driver has none.
    private_address: pulumi.Output[str] | None

    def __init__(self, name: str, args: DockerMachineArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__(outputs.COMPONENT, name, None, opts)
        machine = args.machine
        child = pulumi.ResourceOptions(parent=self)
        ssh_key = SshKey(f"{name}-ssh-key", opts=child)
        host_key = SshKey(f"{name}-host-key", opts=child)
        driver = drivers.load(machine.driver)
        ctx = DriverContext(name, machine, ssh_key, host_key, args.state_dir, args.project_dir, args.stack_owner, child)
        host = driver.create_host(ctx)

        sans = pulumi.Output.from_input(host.address).apply(lambda address: server_sans(address, machine.tls_san))
        server_cert = ServerCertificate(f"{name}-server-cert", args.authority, f"{args.owner}.{name}", sans,
                                        machine.tls_rotation, opts=child)  # fmt: skip
        # For steps that come after this machine's own (a swarm), not outputs: the SSH connection (a secret), the
        # address the Docker client dials, where the stack's other machines reach it (None when the driver gives no
        # such address), and the resource after which Docker answers over TLS.
        self.connection = _connection(host)
        self.private_address = None if host.private_address is None else pulumi.Output.from_input(host.private_address)
        daemon_script, daemon = self._provision(name, machine, host, args.authority, server_cert)
        verified = DockerApiCheck(
            f"{name}-docker-check",
            machine=machine.name,
            host=host.address,
            port=host.engine_port,
            client=args.authority.client,
            configuration=daemon_script.apply(provisioning.digest),
            boot=host.boot,
            running=machine.state == "running",
            opts=pulumi.ResourceOptions(parent=self, depends_on=[daemon]),
        )
        port = pulumi.Output.from_input(host.engine_port).apply(int)  # numbers may come back as floats
        self.url = pulumi.Output.format("tcp://{0}:{1}", host.address, port)
        self.address = pulumi.Output.from_input(host.address)
        self.ready = verified
        if machine.docker_context:
            DockerContext(f"{name}-docker-context", machine_name=machine.name, url=self.url,
                          client=args.authority.client, owner=args.stack_owner.as_dict(),
                          opts=pulumi.ResourceOptions(parent=self, depends_on=[verified]))  # fmt: skip
        running = machine.state == "running"
        driver.after_docker(ctx, host, Docker(self.url, host.engine_port, args.authority.client, host.boot, running,
                                              verified))  # fmt: skip
        cert_dir = outputs.cert_path(machine.name, args.stack_owner)
        self._export(machine, host, port, sans, server_cert, verified, cert_dir)

    def _export(self, machine: MachineConfig, host: Host, port: pulumi.Output[int], sans: pulumi.Output[list[str]],
                server_cert: ServerCertificate, verified: DockerApiCheck, cert_dir: str) -> None:  # fmt: skip
        """The machine's stack outputs (docs/outputs.md) and what later steps of the stack read from it."""
        self.ssh_private_key = pulumi.Output.secret(host.ssh_private_key)
        self.server_cert_serial = server_cert.serial
        self.docker_version = verified.server_version
        self.outputs = pulumi.Output.all(
            ip=host.address, port=port, url=self.url, ssh_host=host.ssh_host, ssh_port=host.ssh_port,
            ssh_user=host.ssh_user, host_key=host.host_key, docker_version=verified.server_version,
            serial=server_cert.serial, expires=server_cert.expires, sans=sans, details=host.details or {},
            private_ip=host.private_address,
        ).apply(lambda v: _machine_outputs(machine, v, cert_dir))  # fmt: skip
        self.register_outputs(
            {
                "outputs": self.outputs,
                "url": self.url,
                "docker_version": self.docker_version,
                "server_cert_serial": self.server_cert_serial,
                "ssh_private_key": self.ssh_private_key,
                "private_address": self.private_address,
            }
        )

    def _provision(self, name: str, machine: MachineConfig, host: Host, authority: CertificateAuthority,
                   server_cert: ServerCertificate) -> tuple[pulumi.Output[str], RemoteCommand]:  # fmt: skip
        """The remote steps, each after the previous one: wait for SSH, install Docker, TLS files, daemon config; and
        beside them the host folders a local VM shares."""
        connection = self.connection

        def step(stage: str, script: pulumi.Input[str], after: pulumi.Resource | None, **kwargs) -> RemoteCommand:
            return RemoteCommand(
                f"{name}-{stage}",
                connection=connection,
                create=provisioning.AS_ROOT,
                stdin=script,
                machine=machine.name,
                step=stage,
                opts=pulumi.ResourceOptions(
                    parent=self,
                    depends_on=[after] if after else [],
                    custom_timeouts=pulumi.CustomTimeouts(create="30m", update="30m"),
                ),
                **kwargs,
            )

        booted = step(names.WAIT_FOR_SSH, provisioning.WAIT_FOR_BOOT, host.ready)
        if host.mounts is not None:
            step(names.MOUNTS, pulumi.Output.from_input(host.mounts).apply(provisioning.mounts_script), booted)
        engine, apt, certs = _from_this_host(machine, host)
        installed = step(names.INSTALL_DOCKER, apt + provisioning.install_script(engine), booted)
        if certs:
            step(names.REGISTRY_CERTS, hostenv.certs_script(certs), installed, triggers=sorted(certs),
                 delete=provisioning.as_root_inline(hostenv.certs_script({})))  # fmt: skip
        certs = pulumi.Output.all(authority.ca_cert, server_cert.cert, server_cert.key)
        tls_files = step(names.TLS, pulumi.Output.secret(certs.apply(lambda v: provisioning.tls_script(*v))), installed)
        daemon_script = server_cert.serial.apply(
            lambda serial: provisioning.daemon_script(engine, machine.driver, serial, host.published_from)
        )
        undo = provisioning.as_root_inline(provisioning.UNDO_DAEMON) if host.undo_on_delete else None
        # The proxies the daemon was given, credentials masked: what a preview shows of them.
        shown = [hostenv.masked_setting(item) for item in engine.env if item.split("=", 1)[0] in hostenv.VARIABLES]
        return daemon_script, step(names.DAEMON_CONFIG, daemon_script, tls_files, delete=undo, triggers=shown or None)


def _from_this_host(machine: MachineConfig, host: Host) -> tuple[EngineOptions, str, dict[str, str]]:
    """The proxies (in the daemon's environment, and apt's script) and registry CAs the machine takes from this host;
    what cannot be passed on is said once, at preview."""
    found, warnings = hostenv.proxies(machine.engine, host.host_address)
    certs, cert_warnings = hostenv.registry_certs(machine.engine, host.host_address)
    for warning in warnings + cert_warnings:
        pulumi.log.warn(f"machine {machine.name}: {warning}")
    engine = machine.engine.model_copy(update={"env": [*machine.engine.env, *hostenv.environment(found)]})
    return engine, hostenv.apt_script(found), certs


def _connection(host: Host) -> pulumi.Output[dict]:
    """How RemoteCommand reaches the host over SSH, the host key it pins included; a secret (the private key)."""
    return pulumi.Output.secret({
        "host": host.ssh_host,
        "port": host.ssh_port,
        "user": host.ssh_user,
        "private_key": host.ssh_private_key,
        "host_key": host.host_key,
        "dial_error_limit": host.dial_error_limit,
        "per_dial_timeout": 10,
    })  # fmt: skip


def _machine_outputs(machine: MachineConfig, v: dict, cert_dir: str) -> dict:
    return outputs.MachineOutputs(
        name=machine.name,
        driver=machine.driver,
        ip=v["ip"],
        port=v["port"],
        url=v["url"],
        env=outputs.docker_env(machine.name, v["url"], cert_dir),
        ssh=outputs.SshEndpoint(host=v["ssh_host"], port=int(v["ssh_port"]), user=v["ssh_user"],
                                host_key=v["host_key"] or ""),  # fmt: skip
        docker_version=v["docker_version"] or "",
        server_cert_serial=v["serial"] or "",
        server_cert_sans=list(v["sans"] or []),
        server_cert_expires=v["expires"] or "",
        details=v["details"],
        private_ip=v["private_ip"],
    ).model_dump(by_alias=True)
