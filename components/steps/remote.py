"""Remote provisioning steps over SSH, as a Python dynamic resource with pulumi-command's interface.

pulumi-command's provider plugin cannot be had on our build machines (docs/toolchain.md), so this resource does
the same job with paramiko: run a command over SSH with a script on stdin, on create and whenever its inputs change;
run an optional delete command on destroy; retry the dial while a host boots. Its inputs follow ``remote.Command``
(connection, create, delete, stdin) so it can be swapped back; ``machine`` and ``step`` only name it in errors.

Unlike pulumi-command, every dial authenticates the host: ``connection.host_key`` (an OpenSSH public key line) is
pinned and any other key ends the dial before anything is sent (docs/ssh.md). ``HostKeyScan`` is the one exception,
by design: trust on first use for a host whose key nobody gave, read once and then kept in the state.
"""

from __future__ import annotations

import base64
import hashlib
import io
import logging
import sys
import time
from typing import Any

import pulumi
from pulumi.dynamic import CreateResult, DiffResult, ResourceProvider, UpdateResult

from components import outputs, wait
from components.dynamic import DynamicResource, inputs_of
from components.errors import StepError
from components.steps import provisioning

DIAL_INTERVAL = 2.0
STDERR_TAIL = 3000


class RemoteError(RuntimeError):
    """An SSH failure before it is attributed to a machine's step."""


class HostKeyMismatch(RemoteError):
    """The host answered with another key than the pinned one: nothing was sent to it."""


def public_key_of(line: str):
    """An OpenSSH public key line (``type base64 [comment]``) as a paramiko key."""
    import paramiko

    parts = (line or "").split()
    if len(parts) < 2:
        raise RemoteError("no SSH host key to pin: the machine's host key is unknown")
    try:
        return paramiko.PKey.from_type_string(parts[0], base64.b64decode(parts[1]))
    except (ValueError, paramiko.SSHException) as err:
        raise RemoteError(f"the pinned SSH host key is not a public key line ({err})") from None


def fingerprint(key) -> str:
    """OpenSSH's SHA256 fingerprint of a paramiko key."""
    digest = base64.b64encode(hashlib.sha256(key.asbytes()).digest()).decode().rstrip("=")
    return f"SHA256:{digest}"


def known_hosts_name(host: str, port: int) -> str:
    return host if port == 22 else f"[{host}]:{port}"


def _load_key(private_key: str):
    import paramiko

    for key_class in (paramiko.Ed25519Key, paramiko.RSAKey, paramiko.ECDSAKey):
        try:
            return key_class.from_private_key(io.StringIO(private_key))
        except paramiko.SSHException:
            continue
    raise RemoteError("the SSH private key is not an ed25519, RSA or ECDSA key in PEM/OpenSSH format")


def connect(connection: dict[str, Any]):
    """Dial until the host answers with the pinned host key and accepts our key, up to ``dial_error_limit`` attempts;
    HostKeyMismatch at once, naming both fingerprints, when it shows another host key."""
    import paramiko

    # paramiko logs a traceback for every refused dial while the host boots; the final error says enough.
    logging.getLogger("paramiko").setLevel(logging.CRITICAL)
    host, port, user = connection["host"], int(connection.get("port") or 22), connection.get("user") or "root"
    pinned = public_key_of(connection.get("host_key") or "")
    key = _load_key(connection["private_key"])
    attempts = int(connection.get("dial_error_limit") or 10)
    timeout = float(connection.get("per_dial_timeout") or 10)

    def dial() -> paramiko.SSHClient:
        client = paramiko.SSHClient()
        client.get_host_keys().add(known_hosts_name(host, port), pinned.get_name(), pinned)
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        try:
            client.connect(
                host, port=port, username=user, pkey=key, timeout=timeout, banner_timeout=timeout,
                auth_timeout=timeout, allow_agent=False, look_for_keys=False,
            )  # fmt: skip
        except paramiko.BadHostKeyException as err:
            client.close()
            raise HostKeyMismatch(
                f"ssh {host}:{port} answered with host key {fingerprint(err.key)}, not the pinned "
                f"{fingerprint(err.expected_key)}: nothing was sent to it (a new host at this address, or someone "
                "posing as it)"
            ) from None
        except BaseException:
            client.close()
            raise
        return client

    try:
        # Until cloud-init has installed the key, a fresh VM refuses it: keep trying, then say so.
        return wait.poll(
            dial, attempts=attempts, interval=DIAL_INTERVAL,
            retry_on=(TimeoutError, OSError, paramiko.SSHException, EOFError), what="ssh",
        )  # fmt: skip
    except wait.WaitTimeout as err:
        reason = "key refused" if isinstance(err.last, paramiko.AuthenticationException) else "unreachable"
        raise RemoteError(f"ssh {user}@{host}:{port}: {reason} after {attempts} attempts: {err.last}") from None


def run(connection: dict[str, Any], command: str, stdin: str | None = None) -> tuple[str, str]:
    """Run ``command`` (interpreted by the remote user's shell) and return (stdout, stderr)."""
    client = connect(connection)
    try:
        chan_in, chan_out, chan_err = client.exec_command(command)
        if stdin:
            chan_in.write(stdin)
        chan_in.channel.shutdown_write()
        stdout = chan_out.read().decode(errors="replace")
        stderr = chan_err.read().decode(errors="replace")
        status = chan_out.channel.recv_exit_status()
    finally:
        client.close()
    if status != 0:
        # The script travels on stdin; only its output (which our scripts keep free of secrets) is shown.
        tail = (stderr.strip() or stdout.strip())[-STDERR_TAIL:]
        raise RemoteError(f"exit code {status}" + (f":\n{tail}" if tail else " (no output)"))
    return stdout.rstrip("\n"), stderr.rstrip("\n")


def _run_step(props: dict[str, Any], command: str, stdin: str | None) -> tuple[str, str]:
    machine = props.get("machine") or props["connection"]["host"]
    try:
        stdout, stderr = run(props["connection"], command, stdin)
    except RemoteError as err:
        raise StepError(machine, props.get("step") or "ssh", str(err)) from None
    for line in stdout.splitlines():
        if line.startswith(provisioning.WARNING):
            # The engine shows what a dynamic provider prints among the `up` output's diagnostics.
            warning = line.removeprefix(provisioning.WARNING)
            print(f"{provisioning.WARNING}machine {machine}: {warning}", file=sys.stderr)
    return stdout, stderr


class _RemoteCommandProvider(ResourceProvider):
    RERUN_ON = ("connection", "create", "stdin", "triggers")

    def create(self, props: dict[str, Any]) -> CreateResult:
        stdout, stderr = _run_step(props, props["create"], props.get("stdin"))
        return CreateResult(f"cmd-{time.time_ns():x}", {**props, "stdout": stdout, "stderr": stderr})

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        changed = [k for k in (*self.RERUN_ON, "delete") if olds.get(k) != news.get(k)]
        return DiffResult(changes=bool(changed))

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        if all(olds.get(k) == news.get(k) for k in self.RERUN_ON):
            return UpdateResult({**news, "stdout": olds.get("stdout"), "stderr": olds.get("stderr")})
        stdout, stderr = _run_step(news, news["create"], news.get("stdin"))
        return UpdateResult({**news, "stdout": stdout, "stderr": stderr})

    def delete(self, _id: str, props: dict[str, Any]) -> None:
        if props.get("delete"):
            stdout, _ = _run_step(props, props["delete"], None)
            if stdout:
                # The engine shows a dynamic provider's stderr: tell the user what was left in place.
                print(f"{props['connection']['host']}: {stdout}", file=sys.stderr)


class RemoteCommand(DynamicResource, module=outputs.REMOTE_COMMAND.module, name=outputs.REMOTE_COMMAND.name):
    """Run ``create`` over SSH (``stdin`` fed to it) and ``delete`` on destroy."""

    # The connection holds the SSH key and stdin may hold TLS keys: never store them in clear.
    SECRET_OUTPUTS = ("connection", "stdin", "stdout", "stderr")
    OUTPUTS = ("stdout", "stderr")

    def __init__(
        self,
        name: str,
        connection: pulumi.Input[dict],
        create: pulumi.Input[str],
        stdin: pulumi.Input[str] | None = None,
        delete: pulumi.Input[str] | None = None,
        machine: str = "",
        step: str = "",
        triggers: pulumi.Input[list] | None = None,
        opts: pulumi.ResourceOptions | None = None,
    ):
        """``triggers`` (pulumi-command's name): values whose change runs the command again, shown in previews."""
        super().__init__(_RemoteCommandProvider(), name, inputs_of(locals()), opts)


# --- trust on first use ----------------------------------------------------------------------------------------------


def scan_host_key(host: str, port: int, attempts: int, timeout: float = 10) -> str:
    """The host's SSH public key as an OpenSSH line, read without logging in (retried while the host boots)."""
    import paramiko

    logging.getLogger("paramiko").setLevel(logging.CRITICAL)

    def read() -> str:
        with paramiko.Transport((host, port)) as transport:
            transport.banner_timeout = timeout
            transport.start_client(timeout=timeout)
            key = transport.get_remote_server_key()
            return f"{key.get_name()} {key.get_base64()}"

    try:
        return wait.poll(read, attempts=attempts, interval=DIAL_INTERVAL,
                         retry_on=(TimeoutError, OSError, paramiko.SSHException, EOFError), what="ssh")  # fmt: skip
    except wait.WaitTimeout as err:
        raise RemoteError(f"ssh {host}:{port}: unreachable after {attempts} attempts: {err.last}") from None


class _HostKeyScanProvider(ResourceProvider):
    def create(self, props: dict[str, Any]) -> CreateResult:
        try:
            key = scan_host_key(props["host"], int(props["port"]), int(props["attempts"]))
        except RemoteError as err:
            raise StepError(props["machine"], "host-key", str(err)) from None
        print(f"machine {props['machine']}: SSH host key {fingerprint(public_key_of(key))} pinned on first use",
              file=sys.stderr)  # fmt: skip
        return CreateResult(f"hostkey-{props['machine']}", {**props, "host_key": key})

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        # A new address is a new host, met for the first time; the same one keeps its pinned key.
        changed = [k for k in ("host", "port") if olds.get(k) != news.get(k)]
        return DiffResult(changes=bool(changed), replaces=changed)


class HostKeyScan(DynamicResource, module=outputs.HOST_KEY_SCAN.module, name=outputs.HOST_KEY_SCAN.name):
    """The SSH host key of a host we did not create and whose key nobody gave: read on first use, then pinned (it
    never changes in the state; a host that shows another key later is refused)."""

    OUTPUTS = ("host_key",)

    def __init__(self, name: str, *, machine: str, host: pulumi.Input[str], port: pulumi.Input[int], attempts: int,
                 opts: pulumi.ResourceOptions | None = None):  # fmt: skip
        super().__init__(_HostKeyScanProvider(), name, inputs_of(locals()), opts)
