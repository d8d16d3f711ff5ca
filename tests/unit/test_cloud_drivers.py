"""What every cloud driver must do alike, with Pulumi mocks: a bad option stops the program before any resource is
registered, and the example stack of each driver is valid (and holds no credentials in plain text)."""

from __future__ import annotations

import pytest

from tests.unit import drivers_common as common

pytestmark = common.SDK_DEPRECATIONS


@pytest.mark.parametrize(
    ("driver", "option", "value"),
    [("aws", "region", "US-EAST-1"), ("azure", "ssh_user", "root"), ("digitalocean", "region", "NYC3")],
)
def test_a_bad_option_stops_the_program_before_any_resource(driver, option, value):
    recorded = common.failed_run(common.machine_spec(driver, {option: value}), rf"machines\[web\].options.{option}")
    assert recorded.resources == []


@pytest.mark.parametrize(
    ("driver", "expected"),
    [
        ("aws", {"instance_type": "t3.small", "open_ports": ["80/tcp", "443/tcp"]}),
        ("azure", {"dns_label": "docker-azure-example", "ssh_user": "docker-user"}),
        ("digitalocean", {"region": "nyc3", "image": "ubuntu-24-04-x64"}),
    ],
)
def test_the_example_stack_config_is_valid(driver, expected):
    options = common.example_options(driver)  # asserts the driver, and no credentials in plain text
    assert {key: getattr(options, key) for key in expected} == expected


BAD_PORTS = [("0", "out of range"), ("65536", "out of range"), ("80/icmp", "protocol"), ("80/sctp", "protocol")]


@pytest.mark.parametrize("driver", ["aws", "azure", "digitalocean"])
@pytest.mark.parametrize(("port", "why"), BAD_PORTS)
def test_an_open_port_out_of_range_or_of_another_protocol(driver, port, why):
    message = common.config_error(driver, {"open_ports": [port]})
    assert "machines[web].options.open_ports" in message and why in message
