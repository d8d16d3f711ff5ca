"""The base of the project's Python dynamic resources."""

from __future__ import annotations

from typing import Any, ClassVar

import pulumi
from pulumi.dynamic import ResourceProvider

_NOT_INPUTS = frozenset({"self", "name", "opts", "__class__"})


def inputs_of(arguments: dict[str, Any]) -> dict[str, Any]:
    """A constructor's keyword arguments (``locals()`` at its start) as the resource's inputs."""
    return {key: value for key, value in arguments.items() if key not in _NOT_INPUTS}


class DynamicResource(pulumi.dynamic.Resource):
    """Inputs as given; ``OUTPUTS`` are what the provider fills in (attributes of the resource, unknown at preview);
    ``SECRET_OUTPUTS`` are stored encrypted whatever the provider returns."""

    OUTPUTS: ClassVar[tuple[str, ...]] = ()
    SECRET_OUTPUTS: ClassVar[tuple[str, ...]] = ()

    def __init__(self, provider: ResourceProvider, name: str, inputs: dict[str, Any],
                 opts: pulumi.ResourceOptions | None = None):  # fmt: skip
        results = [key for key in self.OUTPUTS if key not in inputs]
        if self.SECRET_OUTPUTS:
            secret = pulumi.ResourceOptions(additional_secret_outputs=list(self.SECRET_OUTPUTS))
            opts = pulumi.ResourceOptions.merge(opts, secret)
        super().__init__(provider, name, {**inputs, **dict.fromkeys(results)}, opts)
