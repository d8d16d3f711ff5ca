"""Team mode: a shared state backend and the team's secrets key, and moving a stack there with its machines.

``backend set`` stores the URL and the key file once per user (scripts/env.sh reads them); ``migrate`` moves a
stack from the backend in use to the team's, re-encrypting its secrets with the team key (docs/team.md).
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterator
from contextlib import contextmanager

from pulumi import automation as auto

from . import ui, workspace
from .errors import MachineError

_SALT = re.compile(r"^encryptionsalt: .*\n?", re.M)


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


def set_backend(url: str, key_file: str) -> None:
    if not re.match(r"^(postgres|postgresql|file|s3|azblob|gs)://", url):
        scheme = url.split("://")[0]
        raise MachineError(f"{scheme}:// is not a state backend scripts/machine knows (postgres://, file://, s3://…)")
    key = check_key_file(key_file)
    _write_private(os.path.join(config_dir(), "backend.url"), url)
    _write_private(os.path.join(config_dir(), "backend.key-file"), key)
    ui.err(f"Stacks now live in {shown(url)}, their secrets under the key in {key}")


def unset_backend() -> None:
    for name in ("backend.url", "backend.key-file"):
        try:
            os.unlink(os.path.join(config_dir(), name))
        except FileNotFoundError:
            pass
    ui.err("Back to your own file backend and secrets key")


def shown(url: str) -> str:
    """A backend URL without its password."""
    return re.sub(r"://([^:/@]+):[^@]*@", r"://\1:****@", url)


def _target(url: str, key_file: str) -> auto.LocalWorkspace:
    env = {"PULUMI_BACKEND_URL": url, "PULUMI_CONFIG_PASSPHRASE_FILE": key_file}
    return workspace._Workspace(work_dir=workspace.ROOT, env_vars=env)


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

    The machines keep running: the state is imported as it is (nothing is created or replaced), the stack's
    secret config values are set again under the new key, and the stack is then removed from the old backend
    without touching its resources.
    """
    key = check_key_file(key_file)
    source = workspace.get()
    name = workspace.short_name(stack)
    deployment = source.ws.export_stack(stack)
    secret_config = {k: v for k, v in source.ws.get_all_config(stack).items() if v.secret}
    config_path = workspace.config_file(stack)
    with open(config_path) as f:
        original = f.read()
    target = _target(url, key)
    try:
        with open(config_path, "w") as f:
            f.write(_SALT.sub("", original))  # the new stack gets the team key's salt
        with _only_the_key_file():
            _write_target(target, name, deployment, secret_config)
    except auto.errors.CommandError as err:
        with open(config_path, "w") as f:
            f.write(original)
        raise MachineError(f'moving stack "{name}" to {shown(url)}: {workspace._message(err)}') from None
    # The old copy must not manage the same machines any more; --preserve-config keeps the stack file.
    source.ws.remove_stack(stack, force=True, preserve_config=True)
    ui.err(f'Stack "{name}" now lives in {shown(url)} with its machines; its secrets use the team key')


def _write_target(target: auto.LocalWorkspace, name: str, deployment: auto.Deployment,
                  secret_config: dict[str, auto.ConfigValue]) -> None:  # fmt: skip
    target.create_stack(name)
    # The state's secrets are re-encrypted by the new stack's secrets manager.
    state = deployment.deployment
    state["secrets_providers"] = target.export_stack(name).deployment.get("secrets_providers")
    target.set_all_config(name, secret_config)
    target.import_stack(name, auto.Deployment(version=deployment.version, deployment=state))
