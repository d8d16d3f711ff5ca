"""The policy pack's settings per stack (docs/policy.md): stack config ``docker-machine:policy``.

Stack config (``stacks/Pulumi.<stack>.yaml``)::

    docker-machine:policy:
      production: true
      instance_sizes: [t3.small, s-2vcpu-2gb]
      enforcement: {engine-ingress-anywhere: mandatory, machine-without-docker-context: disabled}

The pack (policy/) reads them when it starts; ``load`` turns a bad value into one ConfigError line per problem, naming
the field and what is allowed. ``pulumi preview --policy-pack-config`` still overrides the enforcement levels.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import Field, ValidationError

from components.model import ConfigError, StrictModel

KEY = "docker-machine:policy"
# The rules and their default enforcement levels. The names are stable: PR reports and --policy-pack-config use them.
RULES = {
    "daemon-tls": "mandatory",
    "install-url-https": "mandatory",
    "insecure-registries": "mandatory",
    "ssh-ingress-anywhere": "mandatory",
    "instance-size": "mandatory",
    "engine-ingress-anywhere": "advisory",
    "machine-without-docker-context": "advisory",
    "vm-replaced": "advisory",
}
LEVELS = ("mandatory", "advisory", "disabled")
Rule = Literal[tuple(RULES)]  # type: ignore[valid-type]
Level = Literal[LEVELS]  # type: ignore[valid-type]


class PolicySettings(StrictModel):
    production: bool = Field(
        False, description="refuse insecure registries and SSH open to the whole internet on this stack"
    )
    instance_sizes: list[str] = Field(
        [], description="the instance sizes allowed (aws instance_type, azure and digitalocean size); empty: any"
    )
    enforcement: dict[Rule, Level] = Field({}, description="rule name → mandatory, advisory or disabled")

    def level(self, rule: str) -> str:
        return self.enforcement.get(rule, RULES[rule])


_HEADER = f"invalid {KEY} settings:\n  "


def _line(error: dict[str, Any], secret: bool) -> str:
    loc = [str(part) for part in error["loc"] if part != "[key]"]
    if secret:  # a secret's keys are as secret as its values: name the setting only
        loc = loc[:1] if loc[:1] and loc[0] in PolicySettings.model_fields else []
    where = ".".join([KEY, *loc])
    shown = "" if secret else f", got {json.dumps(error['input'])[:60]}"
    if error["type"] == "extra_forbidden":
        return f"{where}: unknown setting; allowed: {', '.join(PolicySettings.model_fields)}"
    if error["type"] == "literal_error" and error["loc"][-1] == "[key]":
        return f"{where}: {'a key' if secret else repr(error['input'])} is not a rule; allowed: {', '.join(RULES)}"
    if error["type"] == "literal_error":
        return f"{where}: the level must be one of {', '.join(LEVELS)}{shown}"
    return f"{where}: {error['msg'].removeprefix('Value error, ')}{shown}"


def load(raw: str | None, *, secret: bool = False) -> PolicySettings:
    """The settings from the config value as Pulumi hands it over (JSON text; None: not set). ``secret``: the value is
    a secret, so no part of it is repeated in an error."""
    if raw is None:
        return PolicySettings()
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw  # a plain string: refused below as not a mapping
    if not isinstance(value, dict):
        allowed = ", ".join(PolicySettings.model_fields)
        raise ConfigError(f"{_HEADER}{KEY}: a mapping of settings is wanted ({allowed})")
    try:
        return PolicySettings.model_validate(value)
    except ValidationError as err:
        raise ConfigError(_HEADER + "\n  ".join(_line(e, secret) for e in err.errors())) from None
