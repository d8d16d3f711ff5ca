"""The parts of Go's text/template, text/tabwriter, fmt and encoding/json that docker-machine prints with.

docker-machine's ``ls --format`` and ``inspect --format`` take Go templates and its tables come out of a
tabwriter, so matching its output byte for byte means matching those. Only what the CLI needs is here:
field chains (``.A.B``), pipelines (``|``), ``if``/``else``/``range``/``with``/``end``, trim markers
(``{{-``/``-}}``), string/number/bool literals, and the functions docker-machine and the docker CLI give
templates (``json``, ``prettyjson``, ``len``, ``index``, ``printf``, ``eq``…).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


class TemplateError(ValueError):
    pass


# --- fmt ----------------------------------------------------------------------------------------------


def go_float(value: float) -> str:
    """strconv.FormatFloat(v, 'g', -1, 64), i.e. fmt's %v for a float64 (every JSON number in Go)."""
    if value != value:
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == 0:
        return "0"
    text = repr(abs(float(value)))  # Python's repr is the shortest round-trip form, as Go's -1 precision
    mantissa, _, exp_part = text.partition("e")
    whole, _, frac = mantissa.partition(".")
    digits = whole + frac
    point = len(whole) + (int(exp_part) if exp_part else 0)
    stripped = digits.lstrip("0")
    point -= len(digits) - len(stripped)
    digits = stripped.rstrip("0") or "0"
    sign = "-" if value < 0 else ""
    exp10 = point - 1
    if exp10 < -4 or exp10 >= 6:  # Go: with the shortest precision, %e from an exponent of 6
        body = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
        return f"{sign}{body}e{'+' if exp10 >= 0 else '-'}{abs(exp10):02d}"
    if point <= 0:
        return f"{sign}0.{'0' * -point}{digits}"
    if point >= len(digits):
        return f"{sign}{digits}{'0' * (point - len(digits))}"
    return f"{sign}{digits[:point]}.{digits[point:]}"


def go_value(value: Any, json_numbers: bool = False) -> str:
    """fmt's %v for the values a template prints (maps print sorted, like Go's fmt)."""
    if value is None:
        return "<no value>"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return go_float(float(value)) if json_numbers else str(value)
    if isinstance(value, float):
        return go_float(value)
    if isinstance(value, list | tuple):
        return "[" + " ".join(_nested(v, json_numbers) for v in value) + "]"
    if isinstance(value, dict):
        return "map[" + " ".join(f"{k}:{_nested(value[k], json_numbers)}" for k in sorted(value)) + "]"
    return str(value)


def _nested(value: Any, json_numbers: bool) -> str:
    # Inside a composite, fmt prints a nil interface as <nil>.
    return "<nil>" if value is None else go_value(value, json_numbers)


_GO_ESCAPES = {'"': '\\"', "\\": "\\\\", "\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r",
               "\t": "\\t", "\v": "\\v"}  # fmt: skip


def go_quote(text: str) -> str:
    """strconv.Quote / fmt's %q."""
    out = ['"']
    for ch in text:
        code = ord(ch)
        if ch in _GO_ESCAPES:
            out.append(_GO_ESCAPES[ch])
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\x{code:02x}")
        elif not ch.isprintable():
            out.append(f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def go_duration(seconds: float) -> str:
    """time.Duration.String() for a duration rounded to the millisecond (docker-machine's ResponseTime)."""
    ns = int(round(seconds * 1000)) * 1_000_000
    if ns == 0:
        return "0s"
    sign = "-" if ns < 0 else ""
    ns = abs(ns)
    if ns < 1_000_000_000:
        ms = ns / 1_000_000
        return f"{sign}{ms:g}ms" if ms != int(ms) else f"{sign}{int(ms)}ms"
    total_s, rem = divmod(ns, 1_000_000_000)
    hours, total_s = divmod(total_s, 3600)
    minutes, secs = divmod(total_s, 60)
    frac = f"{rem:09d}".rstrip("0")
    text = f"{secs}" + (f".{frac}" if frac else "") + "s"
    if hours:
        return f"{sign}{hours}h{minutes}m{text}"
    if minutes:
        return f"{sign}{minutes}m{text}"
    return sign + text


# --- encoding/json ------------------------------------------------------------------------------------

_HTML_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}


def go_json(value: Any, indent: str | None = None, sort_keys: bool = True) -> str:
    """json.Marshal / json.MarshalIndent(v, "", indent): HTML-safe escapes, no ASCII escaping."""
    if indent is None:
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, sort_keys=sort_keys)
    else:
        text = json.dumps(value, indent=len(indent), ensure_ascii=False, sort_keys=sort_keys)
    return re.sub("[<>&\u2028\u2029]", lambda m: _HTML_ESCAPES[m.group(0)], text)


# --- text/tabwriter -----------------------------------------------------------------------------------


def tabwrite(text: str, minwidth: int = 5, padding: int = 3, padchar: str = " ") -> str:
    """Go's text/tabwriter (flags 0, tabwidth irrelevant with a space padchar) over a complete text.

    Tab-terminated cells of adjacent lines form a column, padded to its widest cell plus ``padding``
    (at least ``minwidth``); the cell after a line's last tab is not part of any column.
    """
    lines = [line.split("\t") for line in text.split("\n")]
    # The unterminated last line ends at its last tab: Go's Flush adds no empty cell after it.
    if len(lines[-1]) > 1 and lines[-1][-1] == "":
        lines[-1].pop()
    out: list[str] = []
    widths: list[int] = []

    def write_lines(line0: int, line1: int) -> None:
        for i in range(line0, line1):
            cells = lines[i]
            parts = []
            for j, cell in enumerate(cells):
                parts.append(cell)
                if j < len(widths):
                    parts.append(padchar * (widths[j] - len(cell)))
            out.append("".join(parts))
            if i + 1 < len(lines):
                out.append("\n")

    def fmt(line0: int, line1: int) -> None:
        column = len(widths)
        this = line0
        while this < line1:
            if column >= len(lines[this]) - 1:
                this += 1
                continue
            write_lines(line0, this)
            line0 = this
            width = minwidth
            while this < line1 and column < len(lines[this]) - 1:
                width = max(width, len(lines[this][column]) + padding)
                this += 1
            widths.append(width)
            fmt(line0, this)
            widths.pop()
            line0 = this
        write_lines(line0, line1)

    fmt(0, len(lines))
    return "".join(out)


# --- text/template ------------------------------------------------------------------------------------

_ACTION_RE = re.compile(r"\{\{(-\s)?(.*?)(\s-)?\}\}", re.S)


@dataclass
class _Node:
    kind: str  # text | action | if | range | with
    text: str = ""
    pipe: list[list[Any]] = field(default_factory=list)
    body: list[_Node] = field(default_factory=list)
    orelse: list[_Node] = field(default_factory=list)


@dataclass(frozen=True)
class _Field:
    chain: tuple[str, ...]


@dataclass(frozen=True)
class _Ident:
    name: str


@dataclass(frozen=True)
class _Sub:
    pipe: tuple


_TOKEN_RE = re.compile(
    r"""\s*(?:
        (?P<str>"(?:[^"\\]|\\.)*")
      | (?P<raw>`[^`]*`)
      | (?P<field>(?:\.[A-Za-z_][A-Za-z0-9_]*)+|\.)
      | (?P<num>-?\d+(?:\.\d+)?)
      | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
      | (?P<pipe>\|)
      | (?P<lpar>\()
      | (?P<rpar>\))
    )""",
    re.X,
)


def _unquote(literal: str) -> str:
    try:
        return json.loads(literal)
    except ValueError:
        raise TemplateError(f"template: bad string literal {literal}") from None


def _parse_pipeline(source: str) -> list[list[Any]]:
    tokens: list[tuple[str, str]] = []
    pos = 0
    source = source.strip()
    while pos < len(source):
        m = _TOKEN_RE.match(source, pos)
        if not m or m.end() == pos:
            raise TemplateError(f"template: unexpected {source[pos:].strip()[:20]!r} in command")
        kind = m.lastgroup
        tokens.append((kind, m.group(kind)))
        pos = m.end()
        while pos < len(source) and source[pos].isspace():
            pos += 1

    def parse(i: int, closing: bool) -> tuple[list[list[Any]], int]:
        commands: list[list[Any]] = [[]]
        while i < len(tokens):
            kind, value = tokens[i]
            i += 1
            if kind == "pipe":
                if not commands[-1]:
                    raise TemplateError("template: missing command before |")
                commands.append([])
            elif kind == "lpar":
                sub, i = parse(i, True)
                commands[-1].append(_Sub(tuple(tuple(c) for c in sub)))
            elif kind == "rpar":
                if not closing:
                    raise TemplateError("template: unexpected right paren")
                return commands, i
            elif kind == "str":
                commands[-1].append(_unquote(value))
            elif kind == "raw":
                commands[-1].append(value[1:-1])
            elif kind == "num":
                commands[-1].append(float(value) if "." in value else int(value))
            elif kind == "field":
                commands[-1].append(_Field(tuple(p for p in value.split(".") if p)))
            elif value in ("true", "false"):
                commands[-1].append(value == "true")
            elif value == "nil":
                commands[-1].append(None)
            else:
                commands[-1].append(_Ident(value))
        if closing:
            raise TemplateError("template: unclosed left paren")
        if not commands[-1]:
            raise TemplateError("template: missing value for command")
        return commands, i

    commands, _ = parse(0, False)
    return commands


def _parse(text: str) -> list[_Node]:
    root: list[_Node] = []
    stack: list[tuple[_Node, list[_Node]]] = []
    current = root
    pos = 0
    trim_next = False
    for m in _ACTION_RE.finditer(text):
        chunk = text[pos : m.start()]
        if "{{" in chunk:
            raise TemplateError("template: unclosed action")
        if trim_next:
            chunk = chunk.lstrip()
        if m.group(1):
            chunk = chunk.rstrip()
        if chunk:
            current.append(_Node("text", text=chunk))
        trim_next = bool(m.group(3))
        pos = m.end()
        body = m.group(2).strip()
        if body.startswith("/*"):
            continue
        word, _, rest = body.partition(" ")
        if word in ("if", "range", "with"):
            node = _Node(word, pipe=_parse_pipeline(rest))
            current.append(node)
            stack.append((node, current))
            current = node.body
        elif word == "else":
            if not stack:
                raise TemplateError("template: unexpected {{else}}")
            node = stack[-1][0]
            if rest.strip():
                raise TemplateError("template: {{else if}} is not supported")
            current = node.orelse
        elif word == "end":
            if not stack:
                raise TemplateError("template: unexpected {{end}}")
            _, current = stack.pop()
        elif word in ("define", "template", "block"):
            raise TemplateError(f"template: {{{{{word}}}}} is not supported")
        else:
            current.append(_Node("action", pipe=_parse_pipeline(body)))
    if stack:
        raise TemplateError("template: unexpected EOF")
    chunk = text[pos:]
    if "{{" in chunk:
        raise TemplateError("template: unclosed action")
    if trim_next:
        chunk = chunk.lstrip()
    if chunk:
        current.append(_Node("text", text=chunk))
    return root


def _truth(value: Any) -> bool:
    return bool(value) if value is not None else False


def _printf(fmt: str, *args: Any) -> str:
    out, i, arg = [], 0, 0
    while i < len(fmt):
        ch = fmt[i]
        if ch != "%" or i + 1 == len(fmt):
            out.append(ch)
            i += 1
            continue
        verb = fmt[i + 1]
        i += 2
        if verb == "%":
            out.append("%")
            continue
        value = args[arg] if arg < len(args) else None
        arg += 1
        if verb == "q":
            out.append(go_quote(str(value)))
        elif verb == "d":
            out.append(str(int(value)))
        else:
            out.append(go_value(value))
    return "".join(out)


def _index(value: Any, *keys: Any) -> Any:
    for key in keys:
        if isinstance(value, dict):
            value = value.get(key)
        elif isinstance(value, list | tuple | str):
            value = value[int(key)]
        else:
            raise TemplateError(f"template: can't index item of type {type(value).__name__}")
    return value


def _len(value: Any) -> int:
    if value is None:
        raise TemplateError("template: len of nil")
    return len(value)


FUNCS: dict[str, Callable[..., Any]] = {
    "json": lambda v: go_json(v),
    "prettyjson": lambda v: go_json(v, indent="    "),
    "len": _len,
    "index": _index,
    "printf": _printf,
    "print": lambda *a: "".join(go_value(v) for v in a),
    "println": lambda *a: " ".join(go_value(v) for v in a) + "\n",
    "eq": lambda a, *b: any(a == x for x in b),
    "ne": lambda a, b: a != b,
    "not": lambda a: not _truth(a),
    "and": lambda *a: next((v for v in a if not _truth(v)), a[-1]),
    "or": lambda *a: next((v for v in a if _truth(v)), a[-1]),
    "lower": lambda s: str(s).lower(),
    "upper": lambda s: str(s).upper(),
    "title": lambda s: str(s).title(),
    "join": lambda items, sep: sep.join(go_value(i) for i in items or []),
    "split": lambda s, sep: str(s).split(sep),
    "truncate": lambda s, n: str(s)[: int(n)],
}


class Template:
    """A parsed Go template. ``strict``: an unknown field is an error (a Go struct), else ``<no value>`` (a map)."""

    def __init__(self, text: str, strict: bool = False, json_numbers: bool = False):
        self.nodes = _parse(text)
        self.strict = strict
        self.json_numbers = json_numbers

    def _field(self, dot: Any, chain: tuple[str, ...]) -> Any:
        value = dot
        for name in chain:
            if isinstance(value, dict):
                if name not in value:
                    if self.strict:
                        raise TemplateError(f"template: can't evaluate field {name}")
                    return None
                value = value[name]
            elif value is None:
                if self.strict:
                    raise TemplateError(f"template: nil pointer evaluating .{name}")
                return None
            else:
                raise TemplateError(f"template: can't evaluate field {name} in type {type(value).__name__}")
        return value

    def _arg(self, dot: Any, arg: Any) -> Any:
        if isinstance(arg, _Field):
            return self._field(dot, arg.chain)
        if isinstance(arg, _Sub):
            return self._pipe(dot, [list(c) for c in arg.pipe])
        if isinstance(arg, _Ident):
            return self._call(dot, arg.name, [], None, False)
        return arg

    def _call(self, dot: Any, name: str, args: list[Any], piped: Any, has_piped: bool) -> Any:
        if name not in FUNCS:
            raise TemplateError(f'template: function "{name}" not defined')
        values = [self._arg(dot, a) for a in args]
        if has_piped:
            values.append(piped)
        try:
            return FUNCS[name](*values)
        except TemplateError:
            raise
        except (TypeError, ValueError, IndexError, KeyError) as err:
            raise TemplateError(f"template: error calling {name}: {err}") from None

    def _pipe(self, dot: Any, commands: list[list[Any]]) -> Any:
        value, has_value = None, False
        for command in commands:
            head, args = command[0], command[1:]
            if isinstance(head, _Ident):
                value = self._call(dot, head.name, args, value, has_value)
            else:
                if args or has_value:
                    raise TemplateError("template: can't give argument to non-function")
                value = self._arg(dot, head)
            has_value = True
        return value

    def _render(self, nodes: list[_Node], dot: Any, out: list[str]) -> None:
        for node in nodes:
            if node.kind == "text":
                out.append(node.text)
            elif node.kind == "action":
                out.append(go_value(self._pipe(dot, node.pipe), self.json_numbers))
            elif node.kind == "if":
                branch = node.body if _truth(self._pipe(dot, node.pipe)) else node.orelse
                self._render(branch, dot, out)
            elif node.kind == "with":
                value = self._pipe(dot, node.pipe)
                if _truth(value):
                    self._render(node.body, value, out)
                else:
                    self._render(node.orelse, dot, out)
            elif node.kind == "range":
                value = self._pipe(dot, node.pipe)
                items = [value[k] for k in sorted(value)] if isinstance(value, dict) else list(value or [])
                if not items:
                    self._render(node.orelse, dot, out)
                for item in items:
                    self._render(node.body, item, out)

    def execute(self, data: Any) -> str:
        out: list[str] = []
        self._render(self.nodes, data, out)
        return "".join(out)
