"""``scripts/machine preview``: run the preview with the policy pack, print the report, choose the exit status; and
``up``'s review before it changes anything: the policy pack, and the user's consent to machines being replaced or
deleted (their containers and volumes go with them)."""

from __future__ import annotations

import json

from components import outputs

from . import changes, ui, workspace
from .errors import MachineError
from .machines import Registry

# Exit statuses: 0 fine, 1 failed (a mandatory policy, an error), 2 changes where none were expected (drift).
DRIFTED = 2


def run(stack: str | None, *, refresh: bool, expect_no_changes: bool, output: str, policy_configs: list[str],
        raw: str | None = None) -> int:  # fmt: skip
    if output not in changes.FORMATS:
        raise MachineError(f"--format {output!r}: one of {', '.join(changes.FORMATS)}")
    ws = workspace.get()
    if stack is None:
        current = Registry().current_stack()
        if current is None:
            raise MachineError("several stacks and none selected: choose one with --stack")
        stack = current.short
    if not ws.has_stack(stack):
        if refresh:
            # Nothing deployed, nothing to drift from (the drift check walks every stack file).
            ui.err(f'stack "{stack}" has never been deployed on this backend: nothing to refresh')
            return 0
        ws.ensure_stack(stack)
    seen = ws.preview(stack, refresh=refresh, policy_packs=workspace.policy_packs(), policy_configs=policy_configs)
    deployed = [r["urn"].rsplit("::", 1)[-1] for r in ws.resources(stack) if r.get("type") == outputs.COMPONENT]
    report = changes.build(seen.document, seen.policy_events, stack, seen.errors, seen.failed, deployed)
    if raw:
        captured = {"document": seen.document, "policyEvents": seen.policy_events, "errors": seen.errors,
                    "failed": seen.failed, "deployed": deployed}  # fmt: skip
        with open(raw, "w") as f:
            json.dump(captured, f, indent=1)
    ui.out(changes.FORMATS[output](report))
    if seen.failed:
        return 1
    return DRIFTED if expect_no_changes and report.has_changes else 0


def review_up(stack: str, refresh: bool, yes: bool) -> None:
    """Before an up: a preview with the policy pack (a mandatory violation stops it before anything is made), and
    the machines it would replace or delete listed and agreed to: on a terminal the user is asked; without one the up
    is refused, naming them, unless ``yes``."""
    ws = workspace.get()
    seen = ws.preview(stack, refresh=refresh, policy_packs=workspace.policy_packs(), policy_configs=[])
    report = changes.build(seen.document, seen.policy_events, stack, seen.errors, seen.failed)
    for p in report.policies:
        if p.level != "mandatory":
            ui.warn(f"policy {p.policy} ({p.level}) on {p.machine or p.resource or 'the stack'}: {p.message}")
    if seen.failed:
        failed = [f"policy {p.policy} on {p.machine or p.resource or 'the stack'}: {p.message}"
                  for p in report.policies if p.level == "mandatory"]  # fmt: skip
        raise MachineError("up stopped before any change:\n" + "\n".join(failed or report.errors))
    lost = [m for m in report.machines if m.action in ("replace", "delete")]
    if not lost or yes:
        return
    lines = [f"  {m.name}: {changes.what(m)}" for m in lost]
    if ui.interactive():
        ui.info("This up replaces or deletes machines; what is on them is lost:\n" + "\n".join(lines))
        if ui.confirm("Go ahead?"):
            return
        raise MachineError("up stopped before any change: nothing was changed")
    raise MachineError(
        f"up would replace or delete {', '.join(m.name for m in lost)}, losing what is on them; nothing was "
        f"changed. Run it again with --yes (make up YES=1) to go ahead:\n" + "\n".join(lines)
    )
