"""The policy pack's settings per stack (components/policy_settings.py): docker-machine:policy, checked strictly,
each problem one line naming the field and what is allowed."""

from __future__ import annotations

import json

import pytest

from components import policy_settings
from components.model import ConfigError


def error_of(value, *, secret: bool = False) -> list[str]:
    with pytest.raises(ConfigError) as info:
        policy_settings.load(value if isinstance(value, str) else json.dumps(value), secret=secret)
    header, *lines = str(info.value).splitlines()
    assert header == "invalid docker-machine:policy settings:"
    return [line.strip() for line in lines]


def test_defaults_and_the_documented_example():
    assert policy_settings.load(None) == policy_settings.PolicySettings()
    assert all(policy_settings.load(None).level(rule) == level for rule, level in policy_settings.RULES.items())
    enforcement = {"engine-ingress-anywhere": "mandatory", "machine-without-docker-context": "disabled"}
    example = {"production": True, "instance_sizes": ["t3.small", "s-2vcpu-2gb"], "enforcement": enforcement}
    settings = policy_settings.load(json.dumps(example))
    assert settings.production and settings.instance_sizes == ["t3.small", "s-2vcpu-2gb"]
    assert settings.level("engine-ingress-anywhere") == "mandatory"
    assert settings.level("machine-without-docker-context") == "disabled"
    assert settings.level("vm-replaced") == "advisory"


@pytest.mark.parametrize("value", ["production", "[1]", "true", "null"])
def test_settings_must_be_a_mapping(value):
    assert error_of(value) == [
        "docker-machine:policy: a mapping of settings is wanted (production, instance_sizes, enforcement)"
    ]


@pytest.mark.parametrize(
    ("value", "line"),
    [
        ({"production": "yes"}, '.production: Input should be a valid boolean, got "yes"'),
        ({"production": 1}, ".production: Input should be a valid boolean, got 1"),
        ({"instance_sizes": "t3.small"}, '.instance_sizes: Input should be a valid list, got "t3.small"'),
        ({"instance_sizes": [1]}, ".instance_sizes.0: Input should be a valid string, got 1"),
        ({"enforcement": {"vm-replaced": "warn"}},
         '.enforcement.vm-replaced: the level must be one of mandatory, advisory, disabled, got "warn"'),
        ({"enforcement": {"vm_replaced": "advisory"}},
         ".enforcement.vm_replaced: 'vm_replaced' is not a rule; allowed: " + ", ".join(policy_settings.RULES)),
        ({"prod": True}, ".prod: unknown setting; allowed: production, instance_sizes, enforcement"),
    ],
)  # fmt: skip
def test_each_problem_names_the_field_and_what_is_allowed(value, line):
    assert error_of(value) == [policy_settings.KEY + line]


def test_a_secret_value_is_not_repeated():
    lines = error_of({"production": "s3cr3t", "enforcement": {"t0ken": "x"}, "pass": 1}, secret=True)
    assert "docker-machine:policy.production: Input should be a valid boolean" in lines
    assert not any(word in line for line in lines for word in ("s3cr3t", "t0ken", "pass"))
