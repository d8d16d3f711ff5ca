"""The frame of the ``scripts/machine`` commands: the typer app, its global ``--stack``, the argument types the
commands share, and the decorator that turns user errors into one line."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Annotated, Any

import typer

from . import ui
from .errors import MachineError
from .formats import FilterError
from .gotext import TemplateError
from .machines import Registry

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
    help="docker-machine's commands over this project's Pulumi stacks (machines come from stack outputs).",
)
GLOBAL: dict[str, Any] = {"stack": None}


@app.callback()
def main_options(
    stack: Annotated[
        str | None,
        typer.Option("--stack", "-s", envvar="MACHINE_STACK", help="Only use machines of this stack (all commands)."),
    ] = None,
) -> None:
    GLOBAL["stack"] = stack


StackOpt = Annotated[str | None, typer.Option("--stack", "-s", help="Only look in this stack.")]
Names = Annotated[list[str] | None, typer.Argument(help="Machine names (none: the machine named default).")]
Name = Annotated[str | None, typer.Argument(help="Machine name (none: the machine named default).", show_default=False)]
Timeout = Annotated[int, typer.Option("--timeout", "-t", help="Seconds to wait for each host.")]


def command(*args: Any, group: typer.Typer | None = None, **kwargs: Any) -> Callable[..., Callable[..., None]]:
    """A command (of ``app``, or of a ``group`` of commands) whose user errors become one ``Error: …`` line on
    stderr and exit status 1."""

    def decorate(body: Callable[..., int | None]) -> Callable[..., None]:
        @functools.wraps(body)
        def run(*a: Any, **kw: Any) -> None:
            try:
                code = body(*a, **kw)
            except (MachineError, FilterError, TemplateError) as err:
                message = str(err).rstrip("\n")
                ui.err(message if message.startswith("Error") else f"Error: {message}")
                raise typer.Exit(1) from None
            except KeyboardInterrupt:
                ui.err("")
                raise typer.Exit(130) from None
            if code:
                raise typer.Exit(code)

        return (group or app).command(*args, **kwargs)(run)

    return decorate


def registry(stack: str | None) -> Registry:
    return Registry(stack or GLOBAL["stack"])


def one(stack: str | None, name: str | None):
    (machine,) = registry(stack).resolve([name] if name else None)
    return machine


def one_stack(stack: str | None):
    current = registry(stack).current_stack()
    if current is None:
        raise MachineError("several stacks and none selected: choose one with --stack")
    return current
