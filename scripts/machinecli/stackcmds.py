"""The commands that act on a whole stack (docs/cli.md): ``up``, ``preview``, ``unlock`` and team mode's
``backend`` group."""

from __future__ import annotations

from typing import Annotated

import typer

from . import lifecycle, preview, team, ui, workspace
from .cli import GLOBAL, StackOpt, app, command, one_stack
from .errors import MachineError


@command()
def up(
    stack: StackOpt = None,
    refresh: Annotated[bool, typer.Option("--refresh", help="Refresh the state from the hosts first.")] = False,
    yes: Annotated[
        bool, typer.Option("--yes", "-y", help="Go ahead even when machines are replaced or deleted (no question).")
    ] = False,
    create: Annotated[
        bool, typer.Option("--create", help="Create the stack on the backend in use when it has none (make up).")
    ] = False,
    force_unlock: Annotated[
        bool, typer.Option("--force-unlock", help="Clear a lock a pulumi run that no longer exists left (FORCE=1).")
    ] = False,
) -> None:
    """`pulumi up` on a whole stack, with its lock checked and its errors in one line each (`make up`): previewed
    first with the policy pack, and machines it would replace or delete are named and agreed to."""
    if create:
        lifecycle.prepare(stack or GLOBAL["stack"] or "local", force_unlock)
    current = one_stack(stack)
    preview.review_up(current.name, refresh, yes)
    workspace.get().up(current.name, None, refresh=refresh, title=f"pulumi up ({current.short})")


@command("preview")
def preview_command(
    stack: StackOpt = None,
    refresh: Annotated[bool, typer.Option("--refresh", help="Refresh the state from the hosts first (drift).")] = False,
    expect_no_changes: Annotated[
        bool, typer.Option("--expect-no-changes", help="Exit 2 when anything would change (drift checks).")
    ] = False,
    output: Annotated[str, typer.Option("--format", help="markdown, text or json.")] = "text",
    policy_config: Annotated[
        list[str] | None, typer.Option("--policy-config", help="A policy pack config file (pulumi's JSON format).")
    ] = None,
    raw: Annotated[
        str | None, typer.Option("--raw", help="Also save what the report is built from (pulumi's JSON) to a file.")
    ] = None,
) -> int:
    """What `up` would change, machine by machine, with its consequences and the policy pack's results."""
    return preview.run(stack or GLOBAL["stack"], refresh=refresh, expect_no_changes=expect_no_changes,
                      output=output, policy_configs=policy_config or [], raw=raw)  # fmt: skip


backend_app = typer.Typer(help="Team mode: the shared state backend and the team's secrets key (docs/team.md).",
                          no_args_is_help=True)  # fmt: skip
app.add_typer(backend_app, name="backend")


KeyFile = Annotated[str, typer.Option("--key-file", help="The team's secrets passphrase, in a 0600 file.")]


@command("set", group=backend_app)
def backend_set(
    url: Annotated[
        str,
        typer.Argument(
            help="- to read it from stdin (a URL holding a password must come that way), "
            "e.g. postgres://user:password@host:5432/pulumi?sslmode=require"
        ),
    ],
    key_file: KeyFile,
) -> None:
    """Use a shared backend and the team's secrets key from now on (stored for this user)."""
    team.set_backend(url, key_file)


@command("unset", group=backend_app)
def backend_unset() -> None:
    """Go back to your own file backend and secrets key."""
    team.unset_backend()


@command("show", group=backend_app)
def backend_show() -> None:
    """Print the backend in use (password hidden)."""
    ui.info(team.shown(workspace.backend_url()))


@command("migrate", group=backend_app)
def backend_migrate(
    url: Annotated[str, typer.Argument(help="The team's backend; - to read it from stdin.")],
    key_file: KeyFile,
    stack: StackOpt = None,
) -> None:
    """Move a stack, with its running machines, from the backend in use to the team's."""
    team.migrate(one_stack(stack).name, url, key_file)


@command()
def unlock(
    stack: StackOpt = None,
    check: Annotated[bool, typer.Option("--check", help="Only report a lock (exit 1 when there is one).")] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Also clear a lock that a live run, or another host, holds.")
    ] = False,
) -> None:
    """Clear a stack's lock left by a pulumi run that no longer exists (a killed `up`)."""
    current = one_stack(stack)
    ws = workspace.get()
    locks = ws.locks(current.name)
    for lock in locks:
        if check or not (lock.stale() or force):
            raise MachineError(workspace.lock_message(current.name, lock))
    if locks:
        ws.unlock(current.name)
        ui.err(f'Cleared the lock of stack "{current.short}" ({locks[0].describe()})')
