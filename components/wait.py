"""The one wait/retry helper of the tree (tenacity underneath): boots, power-offs, Docker answering, SSH dials."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from tenacity import (
    RetryError,
    Retrying,
    retry_if_exception_type,
    retry_if_result,
    stop_after_attempt,
    stop_after_delay,
    stop_never,
    wait_fixed,
)

T = TypeVar("T")


class WaitTimeout(TimeoutError):
    """What was awaited did not happen in time; ``last`` is the last error seen (None if it just stayed false)."""

    def __init__(self, message: str, last: BaseException | None):
        super().__init__(message)
        self.last = last


def poll(
    attempt: Callable[[], T],
    *,
    timeout: float | None = None,
    attempts: int | None = None,
    interval: float = 1.0,
    retry_on: tuple[type[BaseException], ...] = (),
    what: str = "the condition",
    sleep: Callable[[float], None] | None = None,
) -> T:
    """Call ``attempt`` until it returns a true value, retrying on ``retry_on`` exceptions, every ``interval`` s.

    Stops after ``timeout`` seconds and/or ``attempts`` calls with WaitTimeout (the last exception in ``.last``).
    ``sleep`` replaces time.sleep between attempts (tests make waits instant).
    """
    stop = stop_never
    if timeout is not None:
        stop = stop_after_delay(timeout)
    if attempts is not None:
        stop = stop | stop_after_attempt(attempts) if timeout is not None else stop_after_attempt(attempts)
    retrying = Retrying(
        stop=stop,
        wait=wait_fixed(interval),
        retry=retry_if_exception_type(retry_on) | retry_if_result(lambda result: not result),
        **({"sleep": sleep} if sleep else {}),
    )
    try:
        return retrying(attempt)
    except RetryError as err:
        last = err.last_attempt.exception()
        limit = f"{timeout:.0f} s" if timeout is not None else f"{attempts} attempts"
        detail = f": {last}" if last is not None else ""
        raise WaitTimeout(f"{what} did not happen within {limit}{detail}", last) from None
