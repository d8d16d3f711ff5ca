"""Team mode: a shared state backend and the team's secrets key, and moving a stack there with its machines.

``backend set`` stores the URL and the key file once per user (scripts/env.sh reads them); ``migrate`` moves a
stack from the backend in use to the team's, re-encrypting its secrets with the team key and handing the stack's local
artefacts (instance directories, cert copies, docker contexts) to the moved stack (docs/team.md).

A password never travels on a command line or in an environment: the URL is read from stdin (``-``), and its
password is kept in a 0600 passfile (``pgpass``) that PostgreSQL's clients, Pulumi's included, find through
PGPASSFILE (a path, not the secret).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import stat
import subprocess
import sys
import tempfile
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pulumi import automation as auto

from components import outputs, ownership
from components.steps import dockercontext

from . import ui, workspace
from .errors import MachineError

_SALT = re.compile(r"^encryptionsalt: .*\n?", re.M)
SCHEMES = ("postgres", "postgresql", "file", "s3", "azblob", "gs")
# Query parameters that may carry a password (libpq's, and generic ones).
_PASSWORD_PARAMS = frozenset({"password", "passwd", "pass", "pwd", "sslpassword"})
PASSFILE = "pgpass"


def config_dir() -> str:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(base, "docker-machine-pulumi")


def check_key_file(path: str) -> str:
    """The team's secrets key: a file that exists and only its owner can read."""
    full = os.path.abspath(os.path.expanduser(path))
    try:
        mode = os.stat(full).st_mode
    except OSError as err:
        raise MachineError(f"the secrets key {full} cannot be read: {err.strerror}") from None
    if mode & 0o077:
        raise MachineError(f"the secrets key {full} is readable by others (mode {stat.S_IMODE(mode):o}): chmod 600 it")
    return full


def _write_private(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
        f.write(text + "\n")


def shown(url: str) -> str:
    """A backend URL without its password, in any of its forms (user:password@, a password holding @, ?password=)."""
    parts = urllib.parse.urlsplit(url)
    userinfo, at, host = parts.netloc.rpartition("@")
    if at and ":" in userinfo:
        userinfo = userinfo.split(":", 1)[0] + ":****"
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    masked = [(k, "****" if k.lower() in _PASSWORD_PARAMS else v) for k, v in query]
    netloc = f"{userinfo}@{host}" if at else host
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc, query=urllib.parse.urlencode(masked, safe="*")))


def read_url(url: str) -> str:
    """The backend URL from the command line, or from stdin when given as ``-``; one with a password on the command
    line is refused (any user of the host sees command lines)."""
    if url == "-":
        url = sys.stdin.readline().strip()
        if not url:
            raise MachineError("no backend URL on stdin")
    elif url != shown(url):
        raise MachineError(
            "the backend URL holds a password, which every user of this host could read in the process list: give the "
            "URL on stdin instead, e.g. scripts/machine backend set - --key-file FILE  (then type or paste it)"
        )
    scheme = url.split("://")[0]
    if "://" not in url or scheme not in SCHEMES:
        raise MachineError(f"{scheme}:// is not a state backend scripts/machine knows (postgres://, file://, s3://…)")
    return url


def split_password(url: str) -> tuple[str, str | None]:
    """(the URL without its password, a passfile line for it or None): libpq's ``host:port:db:user:password``."""
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    password = next((v for k, v in query if k.lower() == "password"), None)
    userinfo, at, host = parts.netloc.rpartition("@")
    user = urllib.parse.unquote(userinfo.split(":", 1)[0]) if at else ""
    if at and ":" in userinfo:
        password = urllib.parse.unquote(userinfo.split(":", 1)[1])
    if password is None or not url.startswith(("postgres://", "postgresql://")):
        return url, None
    kept = [(k, v) for k, v in query if k.lower() != "password"]
    netloc = f"{urllib.parse.quote(user)}@{host}" if user else host
    bare = urllib.parse.urlunsplit(parts._replace(netloc=netloc, query=urllib.parse.urlencode(kept)))

    def field(value: str | None, default: str) -> str:
        return (value or default).replace("\\", "\\\\").replace(":", "\\:")

    line = ":".join(field(v, d) for v, d in ((parts.hostname, "*"), (str(parts.port or ""), "*"),
                                             (parts.path.lstrip("/"), "*"), (user, "*"), (password, "")))  # fmt: skip
    return bare, line


def stacks_left_behind() -> str:
    """What stays on the backend in use when the user switches: one line, or ""."""
    try:
        listed = [s for s in workspace.get().stacks() if s.resource_count]
    except MachineError:
        return ""
    if not listed:
        return ""
    names = ", ".join(f'"{s.short}"' for s in listed)
    return (f"Your stacks {names} stay on {shown(workspace.backend_url())} with their machines: go back to them with "
            "`scripts/machine backend unset`, or move one to the team's backend first (backend unset, then "
            "`scripts/machine --stack NAME backend migrate - --key-file FILE`, then backend set again)")  # fmt: skip


def set_backend(url: str, key_file: str) -> None:
    url = read_url(url)
    key = check_key_file(key_file)
    left = stacks_left_behind()
    bare, passfile = split_password(url)
    _write_private(os.path.join(config_dir(), "backend.url"), bare)
    _write_private(os.path.join(config_dir(), "backend.key-file"), key)
    if passfile:
        _write_private(os.path.join(config_dir(), PASSFILE), passfile)
    ui.err(f"Stacks now live in {shown(url)}, their secrets under the key in {key}")
    if left:
        ui.err(left)


def unset_backend() -> None:
    for name in ("backend.url", "backend.key-file", PASSFILE):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(config_dir(), name))
    ui.err("Back to your own file backend and secrets key")


@contextmanager
def _target_env(url: str, key_file: str) -> Iterator[dict[str, str]]:
    """The environment the team's backend is reached with: the URL without its password, a temporary passfile."""
    bare, line = split_password(url)
    env = {"PULUMI_BACKEND_URL": bare, "PULUMI_CONFIG_PASSPHRASE_FILE": key_file}
    with tempfile.TemporaryDirectory(prefix="machine-pg-") as tmp:
        if line:
            env["PGPASSFILE"] = os.path.join(tmp, PASSFILE)
            _write_private(env["PGPASSFILE"], line)
        yield env


@contextmanager
def _only_the_key_file() -> Iterator[None]:
    """The CLI prefers PULUMI_CONFIG_PASSPHRASE to the key file, even set to "" (an empty passphrase): while the
    team's stack is written, the user's own passphrase must not be in the environment at all."""
    own = os.environ.pop("PULUMI_CONFIG_PASSPHRASE", None)
    try:
        yield
    finally:
        if own is not None:
            os.environ["PULUMI_CONFIG_PASSPHRASE"] = own


def migrate(stack: str, url: str, key_file: str) -> None:
    """Move ``stack`` with its state to the backend at ``url``, its secrets re-encrypted with the team's key.

    The machines keep running: the state is imported as it is (nothing is created or replaced) but for the owner it
    names, the stack's secret config values are set again under the new key, the stack's local artefacts are handed
    to the moved stack, and the stack is then removed from the old backend without touching its resources.
    """
    url, key = read_url(url), check_key_file(key_file)
    source = workspace.get()
    name = workspace.short_name(stack)
    old, new = workspace.owner(stack), ownership.Owner(workspace.PROJECT, name, ownership.backend_identity(url))
    deployment = source.ws.export_stack(stack)
    secret_config = {k: v.value for k, v in source.ws.get_all_config(stack).items() if v.secret}
    config_path = workspace.config_file(stack)
    with open(config_path) as f:
        original = f.read()
    try:
        with open(config_path, "w") as f:
            f.write(_SALT.sub("", original))  # the new stack gets the team key's salt
        with _only_the_key_file(), _target_env(url, key) as env:
            _write_target(env, name, _handed_over(deployment, old, new), secret_config)
    except (auto.errors.CommandError, MachineError) as err:
        with open(config_path, "w") as f:
            f.write(original)
        detail = workspace._message(err) if isinstance(err, auto.errors.CommandError) else str(err)
        raise MachineError(f'moving stack "{name}" to {shown(url)}: {detail}') from None
    hand_over_local(deployment.deployment, old, new)
    # The old copy must not manage the same machines any more; --preserve-config keeps the stack file.
    source.ws.remove_stack(stack, force=True, preserve_config=True)
    ui.err(f'Stack "{name}" now lives in {shown(url)} with its machines; its secrets use the team key')


def _handed_over(deployment: auto.Deployment, old: ownership.Owner, new: ownership.Owner) -> auto.Deployment:
    """The state with every ``owner`` the old stack held naming the moved one (so the next `up` has nothing to do)."""
    state = json.loads(json.dumps(deployment.deployment))
    for resource in state.get("resources") or []:
        for section in ("inputs", "outputs"):
            values = resource.get(section) or {}
            if ownership.Owner.from_dict(values.get("owner")) == old:
                values["owner"] = new.as_dict()
    return auto.Deployment(version=deployment.version, deployment=state)


def hand_over_local(state: dict[str, Any], old: ownership.Owner, new: ownership.Owner) -> None:
    """The stack's instance directories, private network, cert copies and docker contexts on this host now belong to
    the moved stack."""
    for resource in state.get("resources") or []:
        inputs = resource.get("inputs") or {}
        if ownership.Owner.from_dict(inputs.get("owner")) != old:
            continue
        if inputs.get("instance_dir"):
            ownership.transfer(inputs["instance_dir"], old, new)
            network = (inputs.get("private_network") or {}).get("dir")
            if network:
                ownership.transfer(network, old, new)
        if inputs.get("machine_name"):
            machine = inputs["machine_name"]
            ownership.transfer(outputs.cert_path(machine, old), old, new)
            context = dockercontext.context_name(machine)
            if dockercontext.docker_path() and dockercontext.ours(dockercontext.description_of(context), machine, old):
                dockercontext.describe(context, dockercontext.description(machine, new))


def _write_target(env: dict[str, str], name: str, deployment: auto.Deployment, secret_config: dict[str, str]) -> None:
    target = workspace._Workspace(work_dir=workspace.ROOT, env_vars=env)
    target.create_stack(name)
    # The state's secrets are re-encrypted by the new stack's secrets manager.
    state = deployment.deployment
    state["secrets_providers"] = target.export_stack(name).deployment.get("secrets_providers")
    for key, value in secret_config.items():
        _set_secret(env, name, key, value)
    target.import_stack(name, auto.Deployment(version=deployment.version, deployment=state))


def _set_secret(env: dict[str, str], stack: str, key: str, value: str) -> None:
    """``pulumi config set KEY --secret`` with the value on stdin: the Automation API would put it on the command
    line, where any user of the host can read it."""
    argv = ["pulumi", "config", "set", key, "--secret", "--stack", stack, "--non-interactive"]
    result = subprocess.run(argv, input=value, cwd=workspace.ROOT, env={**os.environ, **env}, capture_output=True,
                            text=True, timeout=120)  # fmt: skip
    if result.returncode != 0:
        lines = (result.stderr or result.stdout).strip().splitlines()
        raise MachineError(f"setting the secret {key}: {lines[-1] if lines else f'exit {result.returncode}'}")
