"""Golden tests: `scripts/machine` prints docker-machine's exact formats (docs/cli.md).

Expected texts are written out from the spec (and, for the tabwriter and templates, from Go's own
text/tabwriter and text/template), never produced by the code under test.
"""

from __future__ import annotations

import json

import pytest

from components import config as stack_config
from scripts.machinecli import formats, gotext
from scripts.machinecli.formats import LsItem

DEV = {
    "DOCKER_TLS_VERIFY": "1",
    "DOCKER_HOST": "tcp://192.168.99.100:2376",
    "DOCKER_CERT_PATH": "/home/me/.docker/machine/machines/dev",
    "DOCKER_MACHINE_NAME": "dev",
}
SET_CMD = "docker-machine env dev"
UNSET_CMD = "docker-machine env -u"

GOLDEN_SET = {
    "bash": """export DOCKER_TLS_VERIFY="1"
export DOCKER_HOST="tcp://192.168.99.100:2376"
export DOCKER_CERT_PATH="/home/me/.docker/machine/machines/dev"
export DOCKER_MACHINE_NAME="dev"
# Run this command to configure your shell:\x20
# eval $(docker-machine env dev)
""",
    "fish": """set -gx DOCKER_TLS_VERIFY "1";
set -gx DOCKER_HOST "tcp://192.168.99.100:2376";
set -gx DOCKER_CERT_PATH "/home/me/.docker/machine/machines/dev";
set -gx DOCKER_MACHINE_NAME "dev";
# Run this command to configure your shell:\x20
# eval (docker-machine env dev)
""",
    "powershell": """$Env:DOCKER_TLS_VERIFY = "1"
$Env:DOCKER_HOST = "tcp://192.168.99.100:2376"
$Env:DOCKER_CERT_PATH = "/home/me/.docker/machine/machines/dev"
$Env:DOCKER_MACHINE_NAME = "dev"
# Run this command to configure your shell:\x20
# & docker-machine env dev | Invoke-Expression
""",
    "cmd": """SET DOCKER_TLS_VERIFY=1
SET DOCKER_HOST=tcp://192.168.99.100:2376
SET DOCKER_CERT_PATH=/home/me/.docker/machine/machines/dev
SET DOCKER_MACHINE_NAME=dev
REM Run this command to configure your shell:\x20
REM \t@FOR /f "tokens=*" %i IN ('docker-machine env dev') DO @%i
""",
    "tcsh": """setenv DOCKER_TLS_VERIFY "1";
setenv DOCKER_HOST "tcp://192.168.99.100:2376";
setenv DOCKER_CERT_PATH "/home/me/.docker/machine/machines/dev";
setenv DOCKER_MACHINE_NAME "dev";
: Run this command to configure your shell:\x20
: eval `docker-machine env dev`
""",
    "emacs": """(setenv "DOCKER_TLS_VERIFY" "1")
(setenv "DOCKER_HOST" "tcp://192.168.99.100:2376")
(setenv "DOCKER_CERT_PATH" "/home/me/.docker/machine/machines/dev")
(setenv "DOCKER_MACHINE_NAME" "dev")
;; Run this command to configure your shell:\x20
;; (with-temp-buffer (shell-command "docker-machine env dev" (current-buffer)) (eval-buffer))
""",
}

GOLDEN_UNSET = {
    "bash": """unset DOCKER_TLS_VERIFY
unset DOCKER_HOST
unset DOCKER_CERT_PATH
unset DOCKER_MACHINE_NAME
# Run this command to configure your shell:\x20
# eval $(docker-machine env -u)
""",
    "fish": """set -e DOCKER_TLS_VERIFY;
set -e DOCKER_HOST;
set -e DOCKER_CERT_PATH;
set -e DOCKER_MACHINE_NAME;
# Run this command to configure your shell:\x20
# eval (docker-machine env -u)
""",
    "powershell": """Remove-Item Env:\\\\DOCKER_TLS_VERIFY
Remove-Item Env:\\\\DOCKER_HOST
Remove-Item Env:\\\\DOCKER_CERT_PATH
Remove-Item Env:\\\\DOCKER_MACHINE_NAME
# Run this command to configure your shell:\x20
# & docker-machine env -u | Invoke-Expression
""",
    "cmd": """SET DOCKER_TLS_VERIFY=
SET DOCKER_HOST=
SET DOCKER_CERT_PATH=
SET DOCKER_MACHINE_NAME=
REM Run this command to configure your shell:\x20
REM \t@FOR /f "tokens=*" %i IN ('docker-machine env -u') DO @%i
""",
    "tcsh": """unsetenv DOCKER_TLS_VERIFY;
unsetenv DOCKER_HOST;
unsetenv DOCKER_CERT_PATH;
unsetenv DOCKER_MACHINE_NAME;
: Run this command to configure your shell:\x20
: eval `docker-machine env -u`
""",
    "emacs": """(setenv "DOCKER_TLS_VERIFY" nil)
(setenv "DOCKER_HOST" nil)
(setenv "DOCKER_CERT_PATH" nil)
(setenv "DOCKER_MACHINE_NAME" nil)
;; Run this command to configure your shell:\x20
;; (with-temp-buffer (shell-command "docker-machine env -u" (current-buffer)) (eval-buffer))
""",
}

# The proxy line each shell gets: with --no-proxy (NO_PROXY=localhost in the environment), and with
# -u --no-proxy (no_proxy=localhost), where docker-machine prints the name followed by the current value.
GOLDEN_PROXY_SET = {
    "bash": 'export NO_PROXY="localhost,192.168.99.100"\n',
    "fish": 'set -gx NO_PROXY "localhost,192.168.99.100";\n',
    "powershell": '$Env:NO_PROXY = "localhost,192.168.99.100"\n',
    "cmd": "SET NO_PROXY=localhost,192.168.99.100\n",
    "tcsh": 'setenv NO_PROXY "localhost,192.168.99.100";\n',
    "emacs": '(setenv "NO_PROXY" "localhost,192.168.99.100")\n',
}
GOLDEN_PROXY_UNSET = {
    "bash": "unset no_proxylocalhost\n",
    "fish": "set -e no_proxylocalhost;\n",
    "powershell": "Remove-Item Env:\\\\no_proxylocalhost\n",
    "cmd": "SET no_proxy=localhost\n",
    "tcsh": "unsetenv no_proxylocalhost;\n",
    "emacs": '(setenv "no_proxy" nillocalhost)\n',
}


def _hint_start(text: str) -> int:
    return text.index("Run this command") - (text[: text.index("Run this command")][::-1].index("\n"))


@pytest.mark.parametrize("shell", formats.SHELLS)
def test_env_sets_the_variables_in_every_shell(shell):
    assert formats.env_output(shell, SET_CMD, DEV, environ={}) == GOLDEN_SET[shell]


@pytest.mark.parametrize("shell", formats.SHELLS)
def test_env_unset_in_every_shell(shell):
    assert formats.env_output(shell, UNSET_CMD, None, environ={}) == GOLDEN_UNSET[shell]


@pytest.mark.parametrize("shell", formats.SHELLS)
def test_env_no_proxy_appends_the_ip_before_the_hint(shell):
    text = formats.env_output(
        shell, SET_CMD, DEV, no_proxy=True, ip="192.168.99.100", environ={"NO_PROXY": "localhost"}
    )
    cut = _hint_start(GOLDEN_SET[shell])
    assert text == GOLDEN_SET[shell][:cut] + GOLDEN_PROXY_SET[shell] + GOLDEN_SET[shell][cut:]


@pytest.mark.parametrize("shell", formats.SHELLS)
def test_env_unset_no_proxy_keeps_docker_machines_quirk(shell):
    text = formats.env_output(shell, UNSET_CMD, None, no_proxy=True, environ={"no_proxy": "localhost"})
    cut = _hint_start(GOLDEN_UNSET[shell])
    assert text == GOLDEN_UNSET[shell][:cut] + GOLDEN_PROXY_UNSET[shell] + GOLDEN_UNSET[shell][cut:]


def test_no_proxy_rules():
    def line(environ):
        out = formats.env_output("bash", SET_CMD, DEV, no_proxy=True, ip="192.168.99.100", environ=environ)
        return out.splitlines()[4]

    assert line({}) == 'export NO_PROXY="192.168.99.100"'
    assert line({"no_proxy": "a", "NO_PROXY": "b"}) == 'export no_proxy="a,192.168.99.100"'  # lower case first
    assert line({"no_proxy": "", "NO_PROXY": "b"}) == 'export NO_PROXY="b,192.168.99.100"'
    assert line({"NO_PROXY": "10.0.0.0/8,192.168.99.100"}) == 'export NO_PROXY="10.0.0.0/8,192.168.99.100"'


def test_unknown_shells_get_the_bash_form():
    assert formats.env_output("zsh", SET_CMD, DEV, environ={}) == GOLDEN_SET["bash"]
    assert formats.env_output("nu", UNSET_CMD, None, environ={}) == GOLDEN_UNSET["bash"]


def test_shell_detection():
    assert formats.detect_shell(None, {"SHELL": "/usr/bin/fish"}) == "fish"
    assert formats.detect_shell("tcsh", {"SHELL": "/bin/bash"}) == "tcsh"
    assert formats.detect_shell(None, {}) is None


def test_hint_uses_the_command_line_with_argv0_quoted_when_needed():
    assert formats.command_line("scripts/machine", ["env", "dev", "--stack", "local"]) == (
        "scripts/machine env dev --stack local"
    )
    assert formats.command_line("/opt/my tools/machine", ["env"]) == '"/opt/my tools/machine" env'
    assert formats.command_line("C:\\machine.exe", ["env"]) == '"C:\\machine.exe" env'


def test_config_prints_the_five_client_flags():
    assert formats.config_output("/home/me/.docker/machine/machines/dev", "tcp://192.168.99.100:2376") == (
        "--tlsverify\n"
        '--tlscacert="/home/me/.docker/machine/machines/dev/ca.pem"\n'
        '--tlscert="/home/me/.docker/machine/machines/dev/cert.pem"\n'
        '--tlskey="/home/me/.docker/machine/machines/dev/key.pem"\n'
        "-H=tcp://192.168.99.100:2376\n"
    )


def test_config_go_quotes_the_paths():
    assert formats.config_output('/x/a "b"\\c', "tcp://h:1").splitlines()[1] == '--tlscacert="/x/a \\"b\\"\\\\c/ca.pem"'


# --- ls ------------------------------------------------------------------------------------------------

HEADER = "NAME   ACTIVE   DRIVER       STATE     URL                         SWARM   DOCKER     ERRORS"


def test_ls_table_matches_docker_machines_example():
    item = LsItem("dev", "s", "virtualbox", "Running", "tcp://192.168.99.100:2376", "v18.09.7", active_host=True)
    # Go's tabwriter pads every tab-terminated cell, so the row ends with DOCKER's padding.
    assert formats.ls_output([item]) == (
        HEADER + "\ndev    *        virtualbox   Running   tcp://192.168.99.100:2376           v18.09.7   \n"
    )


def test_ls_with_no_machines_prints_the_header():
    assert formats.ls_output([]) == "NAME   ACTIVE   DRIVER   STATE   URL   SWARM   DOCKER   ERRORS\n"


def test_ls_mixed_states():
    items = [
        LsItem("default", "local", "qemu", "Running", "tcp://127.0.0.1:40001", "v24.0.7"),
        LsItem(
            "web", "local", "qemu", "Running", "tcp://127.0.0.1:40002", "Unknown",
            "Unable to query docker version: Get https://127.0.0.1:40002/version: connection refused",
        ),
        LsItem("old", "local", "qemu", "Stopped", docker_version="Unknown"),
        LsItem("far", "cloud", "generic", "Timeout"),
    ]  # fmt: skip
    assert formats.ls_output(formats.sort_items(items)) == (
        "NAME      ACTIVE   DRIVER    STATE     URL                     SWARM   DOCKER    ERRORS\n"
        "default   -        qemu      Running   tcp://127.0.0.1:40001           v24.0.7   \n"
        "far                generic   Timeout                                             \n"
        "old       -        qemu      Stopped                                   Unknown   \n"
        "web       -        qemu      Running   tcp://127.0.0.1:40002           Unknown   "
        "Unable to query docker version: Get https://127.0.0.1:40002/version: connection refused\n"
    )


def test_ls_format_table_and_rows():
    items = [LsItem("b", "s", "qemu", "Running", "tcp://h:1", "v1"), LsItem("a", "s", "generic", "Stopped")]
    items = formats.sort_items(items)
    assert formats.ls_output(items, "table {{.Name}}\\t{{.DriverName}}") == (
        "NAME   DRIVER\na      generic\nb      qemu\n"
    )
    assert formats.ls_output(items, "{{.Name}}: {{.State}}") == "a: Stopped\nb: Running\n"
    assert formats.ls_output(items, "{{.Name}}\\t{{.Stack}}\\t{{.ActiveHost}}") == "a    s    false\nb    s    false\n"


def test_ls_format_shows_the_host_folders():
    mounts = [{"path": "/home/u", "writable": True}, {"path": "/srv", "writable": False}]
    shown = formats.mounts_shown({"mounts": mounts})
    item = LsItem("a", "s", "qemu", "Running", mounts=shown)
    assert formats.ls_output([item], "{{.Name}} {{.Mounts}}") == "a [/home/u /srv (read-only)]\n"
    assert formats.ls_output([LsItem("g", "s", "generic", "Running")], "{{.Name}} {{.Mounts}}") == "g []\n"


def test_ls_format_errors():
    with pytest.raises(gotext.TemplateError, match="Template parsing error"):
        formats.ls_output([LsItem("a", "s", "qemu", "Running")], "{{.Nope}}")
    with pytest.raises(gotext.TemplateError, match="Template parsing error"):
        formats.parse_ls_format("{{if .Name}}")


def test_natural_case_insensitive_order():
    names = ["m10", "M2", "dev", "Alpha", "m1", "beta"]
    items = formats.sort_items([LsItem(n, "s", "qemu", "") for n in names])
    assert [i.name for i in items] == ["Alpha", "beta", "dev", "m1", "M2", "m10"]


def test_filters():
    items = [
        LsItem("dev", "local", "qemu", "Running", labels=("env=dev",)),
        LsItem("prod", "cloud", "amazonec2", "Stopped", labels=("env=prod", "tier=web")),
    ]

    def names(*specs):
        f = formats.parse_filters(list(specs))
        return [i.name for i in items if formats.matches(i, f)]

    assert names() == ["dev", "prod"]
    assert names("driver=qemu") == ["dev"]
    assert names("driver=qemu", "driver=amazonec2") == ["dev", "prod"]  # OR within a key
    assert names("driver=qemu", "state=stopped") == []  # AND across keys
    assert names("state=STOPPED") == ["prod"]
    assert names("name=^p") == ["prod"]
    assert names("name=e") == ["dev"]  # unanchored, like Go's MatchString
    assert names("label=env=prod") == ["prod"]
    assert names("label=tier") == ["prod"]
    assert names("stack=local") == ["dev"]
    assert names("swarm=x") == []
    with pytest.raises(formats.FilterError, match="Unsupported filter key 'colour'"):
        formats.parse_filters(["colour=red"])
    with pytest.raises(formats.FilterError, match="Unsupported filter syntax."):
        formats.parse_filters(["driver"])


# --- Go's tabwriter, templates, fmt and json (expected values produced by Go) -----------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a\tb\nccc\n\tdd\teeeeeee\tf\nx\ty\tz\n", "a    b\nccc\n     dd   eeeeeee   f\nx    y    z\n"),
        ("\tx\t\t", "     x    "),
        ("x\txxxxxxx\t", "x    xxxxxxx"),
        ("héllo\twörld\tx\nab\tc\td\n", "héllo   wörld   x\nab      c       d\n"),
        ("a\tb\n\nc\td\n", "a    b\n\nc    d\n"),
        ("no tabs\nat all\n", "no tabs\nat all\n"),
    ],
)
def test_tabwriter_matches_go(text, expected):
    assert gotext.tabwrite(text) == expected


def test_template_matches_go():
    data = {"Name": "a<b&", "L": [1, 2.5, "s"], "B": False, "M": {"z": 1, "a": [None, True], "q": {"x": "y"}}}
    text = "{{.Name}} {{json .}} {{range .L}}<{{.}}>{{end}} {{if .B}}yes{{else}}no{{end}} {{.M}}"
    assert gotext.Template(text, json_numbers=True).execute(data) == (
        'a<b& {"B":false,"L":[1,2.5,"s"],"M":{"a":[null,true],"q":{"x":"y"},"z":1},"Name":"a\\u003cb\\u0026"} '
        "<1><2.5><s> no map[a:[<nil> true] q:map[x:y] z:1]"
    )
    data = {"Driver": {"Big": 1234567, "Mem": 1000000, "f": 0.1, "N": None}, "L": [None, 1000000]}
    assert gotext.Template("{{.Driver.Big}} {{.Driver.N}} {{.L}} {{.Nope}}", json_numbers=True).execute(data) == (
        "1.234567e+06 <no value> [<nil> 1e+06] <no value>"
    )
    trim = gotext.Template("{{- .A -}}  \n {{.B}}  {{- .C}}").execute({"A": "a", "B": "b", "C": "c"})
    assert trim == "abc"
    funcs = '{{len .L}} {{index .M "k"}} {{index .L 1}} {{printf "%s=%q" .A .A}} {{.A | upper}}'
    assert gotext.Template(funcs).execute({"L": [1, 2, 3], "M": {"k": "v"}, "A": 'a"b'}) == '3 v 2 a"b="a\\"b" A"B'
    ranges = "{{range .M}}{{.}},{{else}}empty{{end}}|{{range .E}}x{{else}}empty{{end}}|{{with .Z}}z{{else}}none{{end}}"
    assert gotext.Template(ranges).execute({"M": {"b": 2, "a": 1}, "E": [], "Z": None}) == "1,2,|empty|none"


def test_prettyjson_matches_go():
    data = {"b": [1, {"x": None}], "a": "<&>", "c": {}, "d": [], "e": 1.5}
    assert gotext.Template("{{prettyjson .}}").execute(data) == (
        '{\n    "a": "\\u003c\\u0026\\u003e",\n    "b": [\n        1,\n        {\n            "x": null\n'
        '        }\n    ],\n    "c": {},\n    "d": [],\n    "e": 1.5\n}'
    )


@pytest.mark.parametrize(
    ("value", "expected"),
    [(0.5, "0.5"), (2048, "2048"), (123456, "123456"), (1000000, "1e+06"), (1234567, "1.234567e+06"),
     (1e21, "1e+21"), (0.0001, "0.0001"), (0.00001, "1e-05"), (1.5e-7, "1.5e-07"), (-42, "-42"), (0.1, "0.1")],
)  # fmt: skip
def test_go_float(value, expected):
    assert gotext.go_float(value) == expected


def test_go_quote_and_duration():
    assert gotext.go_quote('a"b\\c\té\x01\x7f') == '"a\\"b\\\\c\\té\\x01\\x7f"'
    assert [gotext.go_duration(s) for s in (0, 0.012, 0.999, 1, 1.5, 75.25, 3600, 3725.001)] == [
        "0s", "12ms", "999ms", "1s", "1.5s", "1m15.25s", "1h0m0s", "1h2m5.001s",
    ]  # fmt: skip


def test_template_errors():
    for bad in ("{{.A", "{{nosuchfunc .A}}", "{{if .A}}x", "{{end}}"):
        with pytest.raises(gotext.TemplateError):
            gotext.Template(bad).execute({"A": 1})


# --- inspect -------------------------------------------------------------------------------------------


def test_inspect_record_has_docker_machines_shape():
    info = {
        "name": "dev", "driver": "qemu", "ip": "127.0.0.1", "port": 40001, "url": "tcp://127.0.0.1:40001",
        "env": {"DOCKER_CERT_PATH": "/home/me/.docker/machine/machines/dev"},
        "ssh": {"host": "127.0.0.1", "port": 40022, "user": "docker"},
        # What the served certificate names (tls_san, the address, localhost), not just what tls_san lists.
        "serverCertSans": ["a.test", "127.0.0.1", "localhost"],
    }  # fmt: skip
    config = {"name": "dev", "engine": {"labels": ["env=dev"], "install_url": "https://x"}, "tls_san": ["a.test"]}
    (machine,) = stack_config.parse([config]).machines
    record = formats.host_record("dev", "local", info, machine, "/home/me/.docker/machine")
    assert list(record) == ["ConfigVersion", "Driver", "DriverName", "HostOptions", "Name", "Stack", "Outputs"]
    assert list(record["HostOptions"]) == ["Driver", "Memory", "Disk", "EngineOptions", "SwarmOptions", "AuthOptions"]
    text = formats.inspect_output(record)
    assert text.startswith('{\n    "ConfigVersion": 3,\n    "Driver": {\n        "IPAddress": "127.0.0.1",\n')
    assert text.endswith('    "Name": "dev",\n    "Stack": "local",\n' + text[text.index('    "Outputs"') :])
    assert json.loads(text)["HostOptions"]["EngineOptions"]["Labels"] == ["env=dev"]
    assert json.loads(text)["HostOptions"]["AuthOptions"]["ServerCertSANs"] == ["a.test", "127.0.0.1", "localhost"]
    engine = json.loads(text)["HostOptions"]["EngineOptions"]
    assert list(engine) == ["ArbitraryFlags", "Dns", "GraphDir", "Env", "Ipv6", "InsecureRegistry", "Labels",
                            "LogLevel", "StorageDriver", "SelinuxEnabled", "TlsVerify", "RegistryMirror", "InstallURL"]
    assert (engine["StorageDriver"], engine["InstallURL"], engine["TlsVerify"]) == ("overlay2", "https://x", True)
    assert formats.inspect_output(record, "{{.Driver.IPAddress}}") == "127.0.0.1\n"
    assert formats.inspect_output(record, "{{.Driver.SSHPort}} {{json .DriverName}}") == '40022 "qemu"\n'
    assert formats.inspect_output(record, "{{prettyjson .HostOptions.AuthOptions.ServerCertSANs}}") == (
        '[\n    "a.test",\n    "127.0.0.1",\n    "localhost"\n]\n'
    )
    with pytest.raises(gotext.TemplateError, match="template parsing error"):
        formats.inspect_output(record, "{{.Driver")
