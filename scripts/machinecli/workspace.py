"""Every Pulumi operation of ``scripts/machine``, through the Automation API (``pulumi.automation``).

Stacks, outputs, config edits (``--path``: the CLI keeps comments and ``encryptionsalt``), the state (export,
targeted ``up``/``destroy``, forgetting resources) and the backend's locks. Progress is shown as Pulumi prints it;
failures come from the engine's diagnostic events, never from scraping its text. Tests replace ``get()`` with a
fake workspace (tests/fakes/workspace.py).
"""

from __future__ import annotations

import base64
import glob
import json
import os
import socket
import sys
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pulumi import automation as auto

from components import config, outputs, ownership
from components.model import MachineConfig

from .errors import MachineError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# The project's policy pack (docs/policy.md), run with every preview and up when it is there.
POLICY_PACK = os.path.join(ROOT, "policy")


def policy_packs() -> list[str]:
    return [POLICY_PACK] if os.path.isfile(os.path.join(POLICY_PACK, "PulumiPolicy.yaml")) else []


def project_name() -> str:
    try:
        with open(os.path.join(ROOT, "Pulumi.yaml")) as f:
            for line in f:
                if line.startswith("name:"):
                    return line.split(":", 1)[1].strip().strip("'\"")
    except OSError:
        pass
    return "docker-machine"


PROJECT = project_name()
MACHINES_KEY = f"{PROJECT}:machines"


@dataclass
class StackInfo:
    name: str
    current: bool = False
    resource_count: int | None = None

    @property
    def short(self) -> str:
        """The stack's own name (``org/project/stack`` → ``stack``), as in URNs and config file names."""
        return short_name(self.name)


def short_name(stack: str) -> str:
    return stack.rsplit("/", 1)[-1]


@dataclass
class Lock:
    """A backend lock on a stack: who holds it and since when (the DIY backend's lock file)."""

    pid: int
    user: str
    host: str
    since: str

    def stale(self) -> bool:
        """Held by a process of this host that no longer exists (a killed `pulumi up`)."""
        if self.host != socket.gethostname():
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False

    def describe(self) -> str:
        return f"{self.user}@{self.host}, pid {self.pid}, since {self.since}"


def config_file(stack: str) -> str:
    return os.path.join(ROOT, "stacks", f"Pulumi.{short_name(stack)}.yaml")


def _message(err: Exception) -> str:
    """The CLI's own error line from a failed command (its stderr's last ``error:`` line)."""
    text = str(err)
    stderr = text.split(" stderr: ", 1)[-1]
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    errors = [line.removeprefix("error: ") for line in lines if line.startswith("error: ")]
    return (errors or lines or [text.strip()])[-1]


@dataclass
class Preview:
    """What ``Workspace.preview`` saw: the ``--json`` document, policy violations, error lines."""

    document: dict[str, Any] = field(default_factory=dict)
    policy_events: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    failed: bool = False


class _Workspace(auto.LocalWorkspace):
    def select_stack(self, stack_name: str) -> None:
        """Every command names its stack: selecting one would change the user's current stack behind their back."""


@contextmanager
def _progress(title: str) -> Iterator[Callable[[str], None]]:
    """Pulumi's progress lines: a rich spinner on a terminal, the plain lines on stderr otherwise."""
    if sys.stderr.isatty():
        from rich.console import Console

        with Console(stderr=True).status(title) as status:
            yield lambda line: status.update(f"{title} [dim]{line.strip()[:100]}[/dim]") if line.strip() else None
    else:
        yield lambda line: (sys.stderr.write(line if line.endswith("\n") else line + "\n"), sys.stderr.flush())


class Workspace:
    """The project's stacks on the current backend (PULUMI_BACKEND_URL, or the logged-in one)."""

    def __init__(self) -> None:
        self._ws: auto.LocalWorkspace | None = None

    @property
    def ws(self) -> auto.LocalWorkspace:
        if self._ws is None:
            try:
                self._ws = _Workspace(work_dir=ROOT)
            except FileNotFoundError:
                raise MachineError("pulumi is not on PATH (run this through scripts/machine)") from None
        return self._ws

    def _stack(self, name: str) -> auto.Stack:
        return auto.Stack.select(name, self.ws)

    def _run(self, what: str, call: Callable[[], Any]) -> Any:
        try:
            return call()
        except auto.errors.CommandError as err:
            raise MachineError(f"{what}: {_message(err)}" if what else _message(err)) from None

    # --- reading ---------------------------------------------------------------------------------------------

    def stacks(self) -> list[StackInfo]:
        listed = self._run("", self.ws.list_stacks)
        return [StackInfo(s.name, bool(s.current), s.resource_count) for s in listed]

    def outputs(self, stack: str) -> dict[str, Any]:
        values = self._run("", lambda: self.ws.stack_outputs(stack))
        return {key: value.value for key, value in values.items()}

    def machines_config(self, stack: str) -> list[dict[str, Any]]:
        """The stack's ``machines`` list as configured (``[]`` when not set)."""
        try:
            value = self.ws.get_config(stack, MACHINES_KEY, path=True).value
        except auto.errors.CommandError as err:
            if "not found" in str(err):
                return []
            raise MachineError(_message(err)) from None
        parsed = json.loads(value) if value else []
        return parsed if isinstance(parsed, list) else []

    def machines(self, stack: str) -> dict[str, MachineConfig]:
        """The stack's machines as the program reads them (components.config), by name; a bad one left out."""
        return config.machines_of(self.machines_config(stack))

    def resources(self, stack: str) -> list[dict[str, Any]]:
        deployment = self._run(f'reading the state of stack "{stack}"', lambda: self.ws.export_stack(stack))
        return (deployment.deployment or {}).get("resources") or []

    # --- config --------------------------------------------------------------------------------------------------

    def set_config(self, stack: str, path: str, value: str) -> None:
        """``<project>:<path> = value`` with --path (numbers and true/false are typed, as in the stack file)."""
        key = f"{PROJECT}:{path}"
        self._run(f"setting {key}", lambda: self.ws.set_config(stack, key, auto.ConfigValue(value), path=True))

    def set_all_config(self, stack: str, values: dict[str, str]) -> None:
        config = {f"{PROJECT}:{path}": auto.ConfigValue(v) for path, v in values.items()}
        self._run(f'changing the config of stack "{stack}"', lambda: self.ws.set_all_config(stack, config, path=True))

    def remove_config(self, stack: str, path: str) -> None:
        key = f"{PROJECT}:{path}"
        self._run(f"removing {key}", lambda: self.ws.remove_config(stack, key, path=True))

    # --- changing machines ------------------------------------------------------------------------------------

    def up(self, stack: str, targets: list[str] | None, *, replace: list[str] | None = None, refresh: bool = False,
           title: str = "pulumi up") -> None:  # fmt: skip
        """``up`` on the stack, or only on ``targets`` and what depends on them; raises with the engine's errors."""
        # With the policy pack, each resource is checked as it is registered (the Automation API's up skips the
        # preview, so the up command previews first: review.check_policies).
        self._operation(stack, "up", title, lambda s, **kw: s.up(
            target=targets or None, target_dependents=bool(targets) or None, replace=replace or None,
            refresh=refresh or None, suppress_outputs=True, color="never", policy_packs=policy_packs() or None, **kw,
        ))  # fmt: skip

    def destroy(self, stack: str, title: str = "pulumi destroy") -> None:
        self._operation(stack, "destroy", title, lambda s, **kw: s.destroy(color="never", **kw))

    def _operation(self, stack: str, verb: str, title: str, call: Callable[..., Any]) -> None:
        self.check_lock(stack)
        errors: list[str] = []

        def on_event(event: auto.EngineEvent) -> None:
            diagnostic = event.diagnostic_event
            if diagnostic is not None and diagnostic.severity == "error":
                errors.append(diagnostic.message.strip())

        with _progress(title) as show:
            try:
                call(self._stack(stack), on_output=show, on_event=on_event)
            except auto.errors.CommandError as err:
                unreachable = backend_unreachable()
                if unreachable:
                    again = f"scripts/machine --stack {short_name(stack)} up --refresh"
                    raise MachineError(f"pulumi {verb} failed: {unreachable}; once it is back: {again}") from None
                self.check_lock(stack)
                detail = "\n".join(dict.fromkeys(e for e in errors if e != "update failed")) or _message(err)
                raise MachineError(f"pulumi {verb} failed:\n{detail}") from None

    def preview(self, stack: str, *, refresh: bool, policy_packs: list[str], policy_configs: list[str]) -> Preview:
        """``pulumi preview --json`` (the document is the command's stdout) and the policy events sent alongside;
        a failed preview (a mandatory policy violation, a program error) still returns what it printed."""
        self.check_lock(stack)
        printed: list[str] = []
        found = Preview()

        def on_event(event: auto.EngineEvent) -> None:
            policy, diagnostic = event.policy_event, event.diagnostic_event
            if policy is not None:
                found.policy_events.append({
                    "resourceUrn": policy.resource_urn or "", "message": policy.message,
                    "policyName": policy.policy_name, "policyPackName": policy.policy_pack_name,
                    "enforcementLevel": policy.enforcement_level,
                })  # fmt: skip
            elif diagnostic is not None and diagnostic.severity == "error" and not diagnostic.urn:
                found.errors.append(diagnostic.message.strip())
            elif diagnostic is not None and diagnostic.severity == "error":
                found.errors.append(f"{diagnostic.urn.rsplit('::', 1)[-1]}: {diagnostic.message.strip()}")

        try:
            self._stack(stack).preview(
                json=True, refresh=refresh or None, policy_packs=policy_packs or None,
                policy_pack_configs=policy_configs or None, color="never", on_output=printed.append,
                on_event=on_event,
            )  # fmt: skip
        except auto.errors.CommandError as err:
            unreachable = backend_unreachable()
            if unreachable:
                raise MachineError(f"pulumi preview failed: {unreachable}") from None
            found.failed = True
            if not found.errors:
                found.errors.append(_message(err))
        text = "\n".join(printed)
        try:
            found.document = json.loads(text[text.index("{") :]) if "{" in text else {}
        except ValueError:
            found.document = {}
        found.errors = [e for e in dict.fromkeys(found.errors) if e not in ("preview failed", "update failed")]
        return found

    def has_stack(self, stack: str) -> bool:
        return any(short_name(s.name) == short_name(stack) for s in self.stacks())

    def forget(self, stack: str, urn: str) -> None:
        """Drop a resource and what depends on it from the state, deleting nothing (``rm -f`` after a failure)."""
        self._run(
            f"removing {urn} from the state",
            lambda: self.ws.cli_api.state_remove(urn, force=True, target_dependents=True, stack=stack, cwd=ROOT),
        )

    def select(self, stack: str) -> None:
        """Make ``stack`` the current one (what `scripts/pulumi` acts on without --stack), as `make up` always did."""
        self._run(f'selecting stack "{stack}"', lambda: auto.LocalWorkspace.select_stack(self.ws, stack))

    def ensure_stack(self, stack: str) -> None:
        """Create the stack when it does not exist yet (``create`` on a fresh backend)."""
        try:
            self.ws.create_stack(stack)
        except auto.errors.StackAlreadyExistsError:
            pass
        except auto.errors.CommandError as err:
            raise MachineError(f'creating stack "{stack}": {_message(err)}') from None

    # --- locks ---------------------------------------------------------------------------------------------------

    def locks(self, stack: str) -> list[Lock]:
        """The backend's locks on ``stack``: a file backend's lock files, a PostgreSQL backend's lock rows."""
        found = []
        for raw in _lock_records(backend_url(), short_name(stack)):
            try:
                data = json.loads(raw)
                found.append(Lock(int(data["pid"]), data["username"], data["hostname"], _when(data["timestamp"])))
            except (ValueError, KeyError, TypeError):
                continue
        return found

    def check_lock(self, stack: str) -> None:
        """One line naming who holds the stack and what to do, when somebody does."""
        for lock in self.locks(stack):
            raise MachineError(lock_message(stack, lock))

    def unlock(self, stack: str) -> None:
        self._run(f'unlocking stack "{stack}"', lambda: self.ws.cli_api.cancel(stack=stack, cwd=ROOT))


def lock_message(stack: str, lock: Lock) -> str:
    command = f"scripts/machine unlock --stack {short_name(stack)}"
    if lock.stale():
        return (
            f'stack "{short_name(stack)}" is locked by a pulumi run that no longer exists ({lock.describe()}); '
            f"clear the lock with: {command}"
        )
    if lock.host == socket.gethostname():
        return f'stack "{short_name(stack)}" is in use by another pulumi run ({lock.describe()}): wait for it to end'
    return (
        f'stack "{short_name(stack)}" is in use by {lock.describe()}: wait for that run to end; if it is gone for '
        f"good, clear the lock with: {command} --force"
    )


def _lock_records(url: str, stack: str) -> list[str]:
    """The JSON of each lock on ``stack`` (the DIY layout: .pulumi/locks/<org>/<project>/<stack>/<id>.json)."""
    if url.startswith("file://"):
        pattern = os.path.join(url.removeprefix("file://"), ".pulumi", "locks", "*", PROJECT, stack, "*.json")
        records = []
        for path in sorted(glob.glob(pattern)):
            try:
                with open(path) as f:
                    records.append(f.read())
            except OSError:
                continue
        return records
    if url.startswith(("postgres://", "postgresql://")):
        return _postgres_locks(url, stack)
    return []


def _postgres_locks(url: str, stack: str) -> list[str]:
    """A PostgreSQL backend's lock rows for ``stack``, read in-process (psycopg: no password on a command line;
    libpq finds it in the URL or the PGPASSFILE scripts/env.sh names, as Pulumi's own driver does)."""
    import psycopg
    from psycopg import sql

    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qs(parts.query)
    table = (query.pop("table", None) or ["pulumi_state"])[0]
    dsn = urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query, doseq=True)))
    # Keys carry a prefix of their own (the database name) before .pulumi/.
    pattern = f"%.pulumi/locks/%/{PROJECT}/{stack}/%"
    statement = sql.SQL("select data from {} where key like %s order by key").format(sql.Identifier(*table.split(".")))
    try:
        with psycopg.connect(dsn, connect_timeout=10) as connection:
            rows = connection.execute(statement, (pattern,)).fetchall()
    except psycopg.Error:
        return []
    return [_blob(row[0]) for row in rows]


def _blob(data) -> str:
    """A PostgreSQL backend row holds the file as {"data": base64 of its bytes} (jsonb: a dict here)."""
    try:
        value = json.loads(data) if isinstance(data, (str, bytes)) else data
        return base64.b64decode(value["data"]).decode()
    except (ValueError, KeyError, TypeError):
        return data if isinstance(data, str) else json.dumps(data)


def backend_unreachable() -> str | None:
    """For a network backend (PostgreSQL): why it cannot be reached now, else None."""
    url = backend_url()
    if not url.startswith(("postgres://", "postgresql://")):
        return None
    parts = urllib.parse.urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "localhost", parts.port or 5432), timeout=5):
            return None
    except OSError as err:
        shown = parts._replace(netloc=f"{parts.hostname}:{parts.port or 5432}", query="")
        return f"the state backend {urllib.parse.urlunsplit(shown)} does not answer ({err.strerror or err})"


def _when(timestamp: str) -> str:
    try:
        return datetime.fromisoformat(timestamp.replace("Z", "+00:00")).strftime("%Y-%m-%d %H:%M:%S %Z").strip()
    except ValueError:
        return timestamp


def backend_url() -> str:
    return ownership.backend_url()


def owner(stack: str) -> ownership.Owner:
    """Who owns a stack's local artefacts on this host (its stack on the backend in use)."""
    return ownership.current(PROJECT, short_name(stack))


_current: Workspace | None = None


def get() -> Workspace:
    global _current
    if _current is None:
        _current = Workspace()
    return _current


def store_path() -> str:
    return outputs.store_path()
