"""Failures of the project's own resources, as the user reads them: the machine, the step, the cause."""

from __future__ import annotations


class StepError(RuntimeError):
    """``machine NAME: STEP: cause`` (with the remote stderr tail where there is one), and nothing else.

    ``show_traceback = False`` tells the project's dynamic-provider host (scripts/langhost/dynamic_host.py) to hand
    the engine this message alone instead of a Python traceback.
    """

    show_traceback = False

    def __init__(self, machine: str, step: str, cause: str):
        super().__init__(f"machine {machine}: {step}: {cause}")
        self.machine, self.step, self.cause = machine, step, cause
