"""`scripts/machine`: docker-machine verbs backed by stack outputs (see scripts/machine)."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, help="docker-machine's commands over Pulumi stacks.")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class MachineError(Exception):
    pass


def pulumi_json(*args: str) -> Any:
    result = subprocess.run(["pulumi", *args, "--json"], cwd=ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        raise MachineError(result.stderr.strip() or f"pulumi {' '.join(args)} failed")
    return json.loads(result.stdout or "null")


@dataclass
class Machine:
    name: str
    stack: str
    info: dict[str, Any]
    outputs: dict[str, Any]

    @property
    def cert_path(self) -> str:
        return self.info["env"]["DOCKER_CERT_PATH"]

    def write_client_certs(self) -> None:
        """Put the stack's client material where DOCKER_CERT_PATH points (docker-machine's layout)."""
        os.makedirs(self.cert_path, mode=0o700, exist_ok=True)
        files = {"ca.pem": ("caCert", 0o644), "cert.pem": ("clientCert", 0o644), "key.pem": ("clientKey", 0o600)}
        for filename, (key, mode) in files.items():
            path = os.path.join(self.cert_path, filename)
            tmp = path + ".tmp"
            with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode), "w") as f:
                f.write(self.outputs[key])
            os.chmod(tmp, mode)
            os.replace(tmp, path)


def stacks(selected: str | None) -> list[str]:
    if selected:
        return [selected]
    return [s["name"] for s in pulumi_json("stack", "ls") or []]


def find_machine(name: str, stack: str | None) -> Machine:
    for candidate in stacks(stack):
        outputs = pulumi_json("stack", "output", "--show-secrets", "--stack", candidate) or {}
        info = (outputs.get("machines") or {}).get(name)
        if info:
            return Machine(name, candidate, info, outputs)
    where = f"stack {stack!r}" if stack else "any stack of this project"
    raise MachineError(f'Host does not exist: "{name}" (not found in {where})')


def invoking_command() -> str:
    argv0 = os.environ.get("DMP_ARGV0", sys.argv[0])
    if " " in argv0 or "\\" in argv0:
        argv0 = f'"{argv0}"'
    return " ".join([argv0, *sys.argv[1:]])


StackOption = typer.Option(None, "--stack", "-s", help="Only look in this stack.")


def run(fn):
    try:
        fn()
    except MachineError as err:
        typer.echo(f"Error: {err}", err=True)
        raise typer.Exit(1) from None


@app.command()
def env(name: str = typer.Argument("default"), stack: str | None = StackOption) -> None:
    """Print the shell commands that point the docker client at a machine."""

    def body() -> None:
        machine = find_machine(name, stack)
        machine.write_client_certs()
        for key in ("DOCKER_TLS_VERIFY", "DOCKER_HOST", "DOCKER_CERT_PATH", "DOCKER_MACHINE_NAME"):
            typer.echo(f'export {key}="{machine.info["env"][key]}"')
        typer.echo("# Run this command to configure your shell: ")
        typer.echo(f"# eval $({invoking_command()})")

    run(body)


@app.command()
def ip(name: str = typer.Argument("default"), stack: str | None = StackOption) -> None:
    """Print a machine's IP address."""
    run(lambda: typer.echo(find_machine(name, stack).info["ip"]))


@app.command()
def url(name: str = typer.Argument("default"), stack: str | None = StackOption) -> None:
    """Print a machine's Docker URL."""
    run(lambda: typer.echo(find_machine(name, stack).info["url"]))


if __name__ == "__main__":
    app(prog_name=shlex.split(os.environ.get("DMP_ARGV0", "machine"))[0])
