"""``scripts/machine preview``: run the preview with the policy pack, print the report, choose the exit status."""

from __future__ import annotations

import json

from components import outputs

from . import preview, ui, workspace
from .errors import MachineError
from .machines import Registry

# Exit statuses: 0 fine, 1 failed (a mandatory policy, an error), 2 changes where none were expected (drift).
DRIFTED = 2


def run(stack: str | None, *, refresh: bool, expect_no_changes: bool, output: str, policy_configs: list[str],
        raw: str | None = None) -> int:  # fmt: skip
    if output not in preview.FORMATS:
        raise MachineError(f"--format {output!r}: one of {', '.join(preview.FORMATS)}")
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
    report = preview.build(seen.document, seen.policy_events, stack, seen.errors, seen.failed, deployed)
    if raw:
        captured = {"document": seen.document, "policyEvents": seen.policy_events, "errors": seen.errors,
                    "failed": seen.failed, "deployed": deployed}  # fmt: skip
        with open(raw, "w") as f:
            json.dump(captured, f, indent=1)
    ui.out(preview.FORMATS[output](report))
    if seen.failed:
        return 1
    return DRIFTED if expect_no_changes and report.has_changes else 0


def check_policies(stack: str, refresh: bool) -> None:
    """Before an up: the policy pack on a preview, so that a mandatory violation stops it before anything is made."""
    if not workspace.policy_packs():
        return
    ws = workspace.get()
    seen = ws.preview(stack, refresh=refresh, policy_packs=workspace.policy_packs(), policy_configs=[])
    report = preview.build(seen.document, seen.policy_events, stack, seen.errors, seen.failed)
    for p in report.policies:
        if p.level != "mandatory":
            ui.warn(f"policy {p.policy} ({p.level}) on {p.machine or p.resource or 'the stack'}: {p.message}")
    if seen.failed:
        failed = [f"policy {p.policy} on {p.machine or p.resource or 'the stack'}: {p.message}"
                  for p in report.policies if p.level == "mandatory"]  # fmt: skip
        raise MachineError("up stopped before any change:\n" + "\n".join(failed or report.errors))
