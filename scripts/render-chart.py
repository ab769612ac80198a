#!/usr/bin/env python3
"""Renders a Helm chart to plain Kubernetes manifests without helm.

No helm binary is packaged for the machines this project builds on, and helm cannot be built
here (a recent Go toolchain installs from PyPI, but Go modules cannot be fetched). Ferrum's
chart (deploy/helm/ferrum) therefore keeps its templates to the subset of Helm's template
language that this script implements, and this script renders it the way `helm template`
does. Real helm renders the same chart unchanged: everything below is a strict subset of
Helm's behaviour, and anything outside it is an error here, never a silent difference.

Usage (as `helm template RELEASE CHART`):

    scripts/render-chart.py deploy/helm/ferrum                       # default values
    scripts/render-chart.py deploy/helm/ferrum -f my-values.yaml \\
        --set modelRepository.type=s3 --set modelRepository.s3.uri=s3://bucket/models \\
        --release-name prod --namespace serving > ferrum.yaml

Values: the chart's values.yaml, then each -f file in order, then each --set / --set-string
(later wins; maps merge key by key; a key set to null is removed). When the chart has a
values.schema.json and the `jsonschema` package is importable, the merged values are
checked against it, as helm does.

The supported template subset (Go text/template as Helm uses it):

* Text and actions `{{ ... }}`, with whitespace trimming `{{- ` and ` -}}`, and comments
  `{{/* ... */}}`.
* Data: `.` and field chains (`.Values.image.tag`), `$` (the template's root) and `$.x.y`,
  variables `$name := pipeline` and `$name = pipeline`, literals ("strings" with Go escapes,
  `raw strings`, integers, floats, true, false, nil), parenthesised pipelines, and pipes
  `a | f b` (the value before `|` is the last argument of f).
* Control: `if` / `else if` / `else` / `end`, `with` / `else` / `end`, `range` over lists
  and maps (`range $i, $v := ...`; maps in key order) with `else`, `define "name"` (in any
  template; files whose name starts with `_` only define), `template "name" pipeline`.
* Built-in objects: .Values, .Release (Name, Namespace, Service, IsInstall, IsUpgrade,
  Revision), .Chart (Name, Version, AppVersion, Description, KubeVersion, Type), .Template
  (Name, BasePath).
* Functions (Helm/sprig meaning): include, required, fail, default, empty, coalesce,
  ternary, not, and, or, eq, ne, lt, le, gt, ge, len, index, hasKey, list, dict, quote,
  squote, print, printf (verbs %s %d %v %q %%), toString, int, add, sub, toYaml, toJson,
  indent, nindent, trim, trunc, trimSuffix, trimPrefix, replace, lower, upper, hasPrefix,
  hasSuffix, contains, b64enc, sha256sum.
* Helm's number rule: numbers in values are float64 (as helm reads them), so they print as
  Go prints a float64 (8000 -> 8000, 1000000 -> 1e+06); `int` turns one into an integer.
* A field of a missing value (`.Values.nosuch.key`) is an error, as in helm; a missing map
  key is empty.

Not supported (an error if used): lookup, tpl, .Capabilities, .Files, block, break/continue,
and any function not listed above.

Output is `helm template`'s: each document under `# Source: <chart>/templates/<file>`,
documents in Helm's install order (ServiceAccount, Secret, ConfigMap, Service, Deployment,
HorizontalPodAutoscaler, ..., then unknown kinds such as ServiceMonitor), NOTES.txt skipped.
"""

from __future__ import annotations

import argparse
import base64
import copy
import decimal
import hashlib
import importlib.util
import json
import re
import sys
from pathlib import Path
from typing import Any, Callable, Optional

try:
    import yaml
except ImportError:  # pragma: no cover - told to the user below
    yaml = None


class RenderError(Exception):
    """A template, a values file or a --set option that cannot be rendered, with where."""


# --------------------------------------------------------------------------- go formatting


def go_float(value: float) -> str:
    """A float64 as Go's fmt %v writes it: strconv's shortest 'g' form, so the exponent form
    is used when the decimal exponent is below -4 or at least 6 (1e+06, 1.5e-05)."""
    if value != value:
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "+Inf" if value > 0 else "-Inf"
    if value == 0:
        return "0"
    sign, digits, exponent = decimal.Decimal(repr(value)).as_tuple()
    text = "".join(str(d) for d in digits)
    stripped = text.rstrip("0") or "0"
    point = len(text) + exponent  # where the decimal point sits in `text`
    exp = point - 1
    prefix = "-" if sign else ""
    if exp < -4 or exp >= 6:
        mantissa = stripped[0] + ("." + stripped[1:] if len(stripped) > 1 else "")
        return f"{prefix}{mantissa}e{'-' if exp < 0 else '+'}{abs(exp):02d}"
    if point <= 0:
        return f"{prefix}0.{'0' * -point}{stripped}"
    if point >= len(stripped):
        return f"{prefix}{stripped}{'0' * (point - len(stripped))}"
    return f"{prefix}{stripped[:point]}.{stripped[point:]}"


def go_str(value: Any) -> str:
    """A value as Go's fmt %v (and so a template action) prints it."""
    if value is None:
        return "<no value>"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return go_float(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "[" + " ".join(go_print_nested(v) for v in value) + "]"
    if isinstance(value, dict):
        return "map[" + " ".join(f"{k}:{go_print_nested(value[k])}" for k in sorted(value)) + "]"
    return str(value)


def go_print_nested(value: Any) -> str:
    """A value inside a printed list or map (Go writes <nil> there, not <no value>)."""
    return "<nil>" if value is None else go_str(value)


def sprig_str(value: Any) -> str:
    """A value as sprig's toString / strval writes it."""
    if value is None:
        return "<nil>"
    return go_str(value)


def go_quote(text: str) -> str:
    """Go's %q of a string: double-quoted with Go escapes."""
    out = ['"']
    for ch in text:
        code = ord(ch)
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\x{code:02x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def integral_floats_to_int(value: Any) -> Any:
    """Values as JSON marshalling writes them: a float64 with no fraction is an integer."""
    if isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e21:
        return int(value)
    if isinstance(value, list):
        return [integral_floats_to_int(v) for v in value]
    if isinstance(value, dict):
        return {str(k): integral_floats_to_int(v) for k, v in value.items()}
    return value


def to_yaml(value: Any) -> str:
    """Helm's toYaml: YAML with sorted keys, no trailing newline."""
    data = integral_floats_to_int(value)
    if data is None:
        return "null"
    text = yaml.safe_dump(
        data, default_flow_style=False, sort_keys=True, allow_unicode=True, width=1 << 30
    )
    if not isinstance(data, (dict, list)) and text.endswith("\n...\n"):
        text = text[: -len("...\n")]
    return text[:-1] if text.endswith("\n") else text


def to_json(value: Any) -> str:
    """Helm's toJson: compact JSON, sorted keys, Go's HTML-safe escapes."""
    text = json.dumps(
        integral_floats_to_int(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    for raw, escaped in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                         ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(raw, escaped)
    return text


def truthy(value: Any) -> bool:
    """Go template truth: false, 0, nil, and empty strings, lists and maps are false."""
    if value is None:
        return False
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return value != 0
    if isinstance(value, (str, list, dict)):
        return len(value) > 0
    return True


# --------------------------------------------------------------------------- lexing

_TRIM_CHARS = " \t\r\n"


class Token:
    """One token inside an action: kind (str, raw, num, ident, field, var, op) and text."""

    __slots__ = ("kind", "text", "value")

    def __init__(self, kind: str, text: str, value: Any = None) -> None:
        self.kind = kind
        self.text = text
        self.value = value

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        return f"Token({self.kind}, {self.text!r})"


_GO_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", '"': '"', "'": "'",
               "a": "\a", "b": "\b", "f": "\f", "v": "\v", "0": "\0"}

_NUMBER = re.compile(r"[-+]?(?:0[xX][0-9a-fA-F_]+|(?:\d[\d_]*)?\.?\d[\d_]*(?:[eE][-+]?\d+)?)")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_FIELDS = re.compile(r"(?:\.[A-Za-z_][A-Za-z0-9_]*)+")


def _decode_go_string(body: str, where: str) -> str:
    out = []
    i = 0
    while i < len(body):
        ch = body[i]
        if ch != "\\":
            out.append(ch)
            i += 1
            continue
        nxt = body[i + 1] if i + 1 < len(body) else ""
        if nxt in _GO_ESCAPES:
            out.append(_GO_ESCAPES[nxt])
            i += 2
        elif nxt == "x":
            out.append(chr(int(body[i + 2:i + 4], 16)))
            i += 4
        elif nxt == "u":
            out.append(chr(int(body[i + 2:i + 6], 16)))
            i += 6
        elif nxt == "U":
            out.append(chr(int(body[i + 2:i + 10], 16)))
            i += 10
        else:
            raise RenderError(f"{where}: unknown escape \\{nxt} in a string")
    return "".join(out)


def lex_action(src: str, pos: int, where: str) -> tuple[list[Token], int, bool]:
    """Tokens of the action starting at `pos` (just after `{{` and any trim marker); returns
    them, the position after `}}`, and whether the action ends with ` -}}`."""
    tokens: list[Token] = []
    n = len(src)
    while True:
        while pos < n and src[pos] in _TRIM_CHARS:
            pos += 1
        if pos >= n:
            raise RenderError(f"{where}: unclosed action (no }}}})")
        if src.startswith("-}}", pos) and pos > 0 and src[pos - 1] in _TRIM_CHARS:
            return tokens, pos + 3, True
        if src.startswith("}}", pos):
            return tokens, pos + 2, False
        ch = src[pos]
        if ch == '"':
            end = pos + 1
            while end < n and src[end] != '"':
                if src[end] == "\\":
                    end += 1
                if end < n and src[end] == "\n":
                    raise RenderError(f"{where}: newline in a string")
                end += 1
            if end >= n:
                raise RenderError(f"{where}: unterminated string")
            tokens.append(Token("str", src[pos:end + 1],
                                _decode_go_string(src[pos + 1:end], where)))
            pos = end + 1
        elif ch == "`":
            end = src.find("`", pos + 1)
            if end < 0:
                raise RenderError(f"{where}: unterminated raw string")
            tokens.append(Token("str", src[pos:end + 1], src[pos + 1:end]))
            pos = end + 1
        elif src.startswith(":=", pos):
            tokens.append(Token("op", ":="))
            pos += 2
        elif ch in "|(),=":
            tokens.append(Token("op", ch))
            pos += 1
        elif ch == "$":
            m = _IDENT.match(src, pos + 1)
            name = "$" + (m.group(0) if m else "")
            end = m.end() if m else pos + 1
            f = _FIELDS.match(src, end)
            fields = f.group(0)[1:].split(".") if f else []
            tokens.append(Token("var", src[pos:(f.end() if f else end)], (name, fields)))
            pos = f.end() if f else end
        elif ch == ".":
            f = _FIELDS.match(src, pos)
            if f:
                tokens.append(Token("field", f.group(0), f.group(0)[1:].split(".")))
                pos = f.end()
            elif pos + 1 < n and src[pos + 1].isdigit():
                m = _NUMBER.match(src, pos)
                tokens.append(_number_token(m.group(0), where))
                pos = m.end()
            else:
                tokens.append(Token("field", ".", []))
                pos += 1
        elif ch.isdigit() or (ch in "+-" and pos + 1 < n and (src[pos + 1].isdigit()
                                                            or src[pos + 1] == ".")):
            m = _NUMBER.match(src, pos)
            if not m:
                raise RenderError(f"{where}: bad number at {src[pos:pos + 10]!r}")
            tokens.append(_number_token(m.group(0), where))
            pos = m.end()
        elif _IDENT.match(src, pos):
            m = _IDENT.match(src, pos)
            tokens.append(Token("ident", m.group(0)))
            pos = m.end()
            if src.startswith(".", pos) and _FIELDS.match(src, pos):
                raise RenderError(f"{where}: field access on '{m.group(0)}' is not supported")
        else:
            raise RenderError(f"{where}: unexpected character {ch!r} in an action")


def _number_token(text: str, where: str) -> Token:
    clean = text.replace("_", "")
    try:
        if re.fullmatch(r"[-+]?0[xX][0-9a-fA-F]+", clean):
            return Token("num", text, int(clean, 16))
        if re.fullmatch(r"[-+]?\d+", clean):
            return Token("num", text, int(clean))
        return Token("num", text, float(clean))
    except ValueError:
        raise RenderError(f"{where}: bad number {text!r}") from None


# --------------------------------------------------------------------------- parsing


class Node:
    """A node of a parsed template."""


class Text(Node):
    """Literal text."""

    def __init__(self, text: str) -> None:
        self.text = text


class Pipeline:
    """Commands joined by `|`, with an optional variable declaration or assignment."""

    def __init__(self, commands: list, decl: Optional[list[str]], assign: bool, where: str):
        self.commands = commands
        self.decl = decl
        self.assign = assign
        self.where = where


class Action(Node):
    """`{{ pipeline }}`: prints the value unless the pipeline declares a variable."""

    def __init__(self, pipe: Pipeline) -> None:
        self.pipe = pipe


class If(Node):
    """if / else if / else."""

    def __init__(self, branches: list, otherwise: Optional[list]) -> None:
        self.branches = branches
        self.otherwise = otherwise


class With(Node):
    """with / else: the body runs with dot set to a non-empty value."""

    def __init__(self, pipe: Pipeline, body: list, otherwise: Optional[list]) -> None:
        self.pipe = pipe
        self.body = body
        self.otherwise = otherwise


class Range(Node):
    """range over a list or map, with else for an empty one."""

    def __init__(self, pipe: Pipeline, body: list, otherwise: Optional[list]) -> None:
        self.pipe = pipe
        self.body = body
        self.otherwise = otherwise


class TemplateCall(Node):
    """`{{ template "name" pipeline }}`."""

    def __init__(self, name: str, pipe: Optional[Pipeline], where: str) -> None:
        self.name = name
        self.pipe = pipe
        self.where = where


class _Parser:
    """Turns one template file's text into nodes and named definitions."""

    def __init__(self, src: str, name: str, defines: dict) -> None:
        self.src = src
        self.name = name
        self.defines = defines
        self.items: list = []  # ("text", str) and ("action", tokens, line)
        self._scan()
        self.index = 0

    def _line(self, pos: int) -> int:
        return self.src.count("\n", 0, pos) + 1

    def _scan(self) -> None:
        src = self.src
        pos = 0
        pending_trim = False
        while True:
            start = src.find("{{", pos)
            text = src[pos:] if start < 0 else src[pos:start]
            if pending_trim:
                text = text.lstrip(_TRIM_CHARS)
            if start < 0:
                if text:
                    self.items.append(("text", text))
                return
            where = f"{self.name}:{self._line(start)}"
            inner = start + 2
            trim_left = src.startswith("- ", inner) or src.startswith("-\t", inner) or \
                src.startswith("-\n", inner) or src.startswith("-\r", inner)
            if trim_left:
                text = text.rstrip(_TRIM_CHARS)
                inner += 1
            if text:
                self.items.append(("text", text))
            # A comment: {{/* ... */}} (with optional trim markers around it).
            probe = inner
            while probe < len(src) and src[probe] in _TRIM_CHARS:
                probe += 1
            if src.startswith("/*", probe):
                end = src.find("*/", probe + 2)
                if end < 0:
                    raise RenderError(f"{where}: unclosed comment")
                after = end + 2
                while after < len(src) and src[after] in _TRIM_CHARS:
                    after += 1
                if src.startswith("-}}", after):
                    pos, pending_trim = after + 3, True
                elif src.startswith("}}", after):
                    pos, pending_trim = after + 2, False
                else:
                    raise RenderError(f"{where}: comment not followed by }}}}")
                continue
            tokens, pos, pending_trim = lex_action(src, inner, where)
            if not tokens:
                raise RenderError(f"{where}: empty action")
            self.items.append(("action", tokens, where))

    # -- structure

    def parse(self) -> list:
        nodes, stop = self._parse_list(top=True)
        if stop is not None:
            raise RenderError(f"{stop[2]}: unexpected {{{{{stop[1][0].text}}}}}")
        return nodes

    def _parse_list(self, top: bool = False) -> tuple[list, Optional[tuple]]:
        """Nodes up to an `else` or `end` (returned as the stop item) or the end of input."""
        nodes: list = []
        while self.index < len(self.items):
            item = self.items[self.index]
            self.index += 1
            if item[0] == "text":
                nodes.append(Text(item[1]))
                continue
            tokens, where = item[1], item[2]
            head = tokens[0].text if tokens[0].kind == "ident" else None
            if head in ("end", "else"):
                if top:
                    raise RenderError(f"{where}: {{{{{head}}}}} without a matching block")
                return nodes, item
            if head == "if":
                nodes.append(self._parse_if(tokens[1:], where))
            elif head in ("with", "range"):
                pipe = self._pipeline(tokens[1:], where, allow_decl=True, in_range=head == "range")
                body, stop = self._parse_list()
                otherwise = None
                if stop is not None and stop[1][0].text == "else":
                    if len(stop[1]) > 1:
                        raise RenderError(f"{stop[2]}: 'else {stop[1][1].text}' is not "
                                          f"supported after {head}")
                    otherwise, stop = self._parse_list()
                self._expect_end(stop, head, where)
                nodes.append((With if head == "with" else Range)(pipe, body, otherwise))
            elif head == "define":
                if not top:
                    raise RenderError(f"{where}: define is only allowed at the top level")
                if len(tokens) != 2 or tokens[1].kind != "str":
                    raise RenderError(f"{where}: define takes one quoted name")
                body, stop = self._parse_list()
                self._expect_end(stop, "define", where)
                self.defines[tokens[1].value] = body
            elif head == "template":
                if len(tokens) < 2 or tokens[1].kind != "str":
                    raise RenderError(f"{where}: template takes a quoted name")
                pipe = self._pipeline(tokens[2:], where) if len(tokens) > 2 else None
                nodes.append(TemplateCall(tokens[1].value, pipe, where))
            elif head in ("block", "break", "continue"):
                raise RenderError(f"{where}: '{head}' is not in the supported template subset")
            else:
                nodes.append(Action(self._pipeline(tokens, where, allow_decl=True)))
        return nodes, None

    def _parse_if(self, cond: list, where: str) -> If:
        branches = []
        pipe = self._pipeline(cond, where)
        while True:
            body, stop = self._parse_list()
            branches.append((pipe, body))
            if stop is None:
                raise RenderError(f"{where}: if without end")
            words = stop[1]
            if words[0].text == "end":
                if len(words) > 1:
                    raise RenderError(f"{stop[2]}: end takes nothing")
                return If(branches, None)
            # else / else if
            if len(words) > 1 and words[1].kind == "ident" and words[1].text == "if":
                pipe = self._pipeline(words[2:], stop[2])
                continue
            if len(words) > 1:
                raise RenderError(f"{stop[2]}: unsupported 'else {words[1].text}'")
            otherwise, stop2 = self._parse_list()
            self._expect_end(stop2, "if", where)
            return If(branches, otherwise)

    def _expect_end(self, stop: Optional[tuple], what: str, where: str) -> None:
        if stop is None or stop[1][0].text != "end":
            raise RenderError(f"{where}: {what} without end")
        if len(stop[1]) > 1:
            raise RenderError(f"{stop[2]}: end takes nothing")

    # -- pipelines

    def _pipeline(self, tokens: list, where: str, allow_decl: bool = False,
                  in_range: bool = False) -> Pipeline:
        decl = None
        assign = False
        if allow_decl and tokens and tokens[0].kind == "var":
            names = []
            i = 0
            while i < len(tokens) and tokens[i].kind == "var" and not tokens[i].value[1]:
                names.append(tokens[i].value[0])
                if i + 1 < len(tokens) and tokens[i + 1].text == "," and in_range:
                    i += 2
                    continue
                i += 1
                break
            if i < len(tokens) and tokens[i].kind == "op" and tokens[i].text in (":=", "="):
                if len(names) > (2 if in_range else 1):
                    raise RenderError(f"{where}: too many variables")
                decl = names
                assign = tokens[i].text == "="
                tokens = tokens[i + 1:]
        if not tokens:
            raise RenderError(f"{where}: missing value")
        commands = []
        current: list = []
        depth = 0
        stack: list = [current]
        # Split on top-level '|' and build nested groups for parentheses.
        for tok in tokens:
            if tok.kind == "op" and tok.text == "(":
                new: list = []
                stack[-1].append(("group", new))
                stack.append(new)
                depth += 1
            elif tok.kind == "op" and tok.text == ")":
                if depth == 0:
                    raise RenderError(f"{where}: unbalanced )")
                stack.pop()
                depth -= 1
            elif tok.kind == "op" and tok.text == "|" and depth == 0:
                commands.append(stack[0])
                stack = [[]]
            elif tok.kind == "op" and tok.text in ("|",):
                stack[-1].append(("pipe", None))
            elif tok.kind == "op":
                raise RenderError(f"{where}: unexpected '{tok.text}'")
            else:
                stack[-1].append(("tok", tok))
        if depth != 0:
            raise RenderError(f"{where}: unbalanced (")
        commands.append(stack[0])
        parsed = [self._command(c, where) for c in commands]
        return Pipeline(parsed, decl, assign, where)

    def _command(self, items: list, where: str) -> list:
        if not items:
            raise RenderError(f"{where}: empty command in a pipeline")
        return [self._operand(item, where) for item in items]

    def _operand(self, item: tuple, where: str) -> tuple:
        kind, payload = item
        if kind == "group":
            # A parenthesised pipeline: split its own '|' markers into commands.
            commands: list = [[]]
            for sub in payload:
                if sub[0] == "pipe":
                    commands.append([])
                else:
                    commands[-1].append(sub)
            return ("pipe", Pipeline([self._command(c, where) for c in commands], None, False,
                                     where))
        if kind == "pipe":
            raise RenderError(f"{where}: misplaced |")
        tok = payload
        if tok.kind in ("str", "num"):
            return ("lit", tok.value)
        if tok.kind == "field":
            return ("field", tok.value)
        if tok.kind == "var":
            return ("var", tok.value)
        if tok.kind == "ident":
            if tok.text == "true":
                return ("lit", True)
            if tok.text == "false":
                return ("lit", False)
            if tok.text == "nil":
                return ("lit", None)
            return ("func", tok.text)
        raise RenderError(f"{where}: unexpected {tok.text!r}")


# --------------------------------------------------------------------------- evaluation


class _Scope:
    """Variables visible at one point: a stack of frames."""

    def __init__(self, root: Any) -> None:
        self.frames: list[dict] = [{"$": root}]

    def push(self) -> None:
        self.frames.append({})

    def pop(self) -> None:
        self.frames.pop()

    def get(self, name: str, where: str) -> Any:
        for frame in reversed(self.frames):
            if name in frame:
                return frame[name]
        raise RenderError(f"{where}: undefined variable {name}")

    def declare(self, name: str, value: Any) -> None:
        self.frames[-1][name] = value

    def assign(self, name: str, value: Any, where: str) -> None:
        for frame in reversed(self.frames):
            if name in frame:
                frame[name] = value
                return
        raise RenderError(f"{where}: undefined variable {name}")


_MAX_INCLUDE_DEPTH = 1000


class Engine:
    """Named templates plus the functions they may call; renders nodes to text."""

    def __init__(self) -> None:
        self.defines: dict[str, list] = {}
        self.depth = 0
        self.funcs: dict[str, Callable] = self._functions()

    def parse(self, src: str, name: str) -> list:
        return _Parser(src, name, self.defines).parse()

    # -- execution

    def execute(self, nodes: list, dot: Any, root: Any = None) -> str:
        out: list[str] = []
        scope = _Scope(dot if root is None else root)
        self._run(nodes, dot, scope, out)
        return "".join(out)

    def _run(self, nodes: list, dot: Any, scope: _Scope, out: list) -> None:
        for node in nodes:
            if isinstance(node, Text):
                out.append(node.text)
            elif isinstance(node, Action):
                value = self._pipe(node.pipe, dot, scope)
                if node.pipe.decl is None:
                    out.append(go_str(value))
            elif isinstance(node, If):
                for pipe, body in node.branches:
                    if truthy(self._pipe(pipe, dot, scope)):
                        self._block(body, dot, scope, out)
                        break
                else:
                    if node.otherwise is not None:
                        self._block(node.otherwise, dot, scope, out)
            elif isinstance(node, With):
                scope.push()
                value = self._pipe(node.pipe, dot, scope)
                if truthy(value):
                    self._run(node.body, value, scope, out)
                elif node.otherwise is not None:
                    self._run(node.otherwise, dot, scope, out)
                scope.pop()
            elif isinstance(node, Range):
                self._range(node, dot, scope, out)
            elif isinstance(node, TemplateCall):
                data = self._pipe(node.pipe, dot, scope) if node.pipe else None
                out.append(self.include(node.name, data, node.where))

    def _block(self, body: list, dot: Any, scope: _Scope, out: list) -> None:
        scope.push()
        self._run(body, dot, scope, out)
        scope.pop()

    def _range(self, node: Range, dot: Any, scope: _Scope, out: list) -> None:
        pipe = node.pipe
        names = pipe.decl or []
        scope.push()
        collection = self._eval_commands(pipe, dot, scope)
        if collection is None:
            items: list = []
        elif isinstance(collection, dict):
            items = [(k, collection[k]) for k in sorted(collection)]
        elif isinstance(collection, list):
            items = list(enumerate(collection))
        elif isinstance(collection, int) and not isinstance(collection, bool):
            items = [(i, i) for i in range(collection)]
        else:
            raise RenderError(f"{pipe.where}: range can't iterate over {go_str(collection)}")
        if not items:
            if node.otherwise is not None:
                self._run(node.otherwise, dot, scope, out)
            scope.pop()
            return
        for key, value in items:
            scope.push()
            if len(names) == 1:
                scope.declare(names[0], value)
            elif len(names) == 2:
                scope.declare(names[0], key)
                scope.declare(names[1], value)
            self._run(node.body, value, scope, out)
            scope.pop()
        scope.pop()

    def _pipe(self, pipe: Pipeline, dot: Any, scope: _Scope) -> Any:
        value = self._eval_commands(pipe, dot, scope)
        if pipe.decl:
            if pipe.assign:
                scope.assign(pipe.decl[0], value, pipe.where)
            else:
                scope.declare(pipe.decl[0], value)
        return value

    def _eval_commands(self, pipe: Pipeline, dot: Any, scope: _Scope) -> Any:
        value: Any = None
        for i, command in enumerate(pipe.commands):
            value = self._command(command, dot, scope, pipe.where,
                                  piped=(value,) if i > 0 else ())
        return value

    def _command(self, command: list, dot: Any, scope: _Scope, where: str,
                 piped: tuple) -> Any:
        head = command[0]
        if head[0] == "func":
            name = head[1]
            if name in ("and", "or"):
                return self._and_or(name, command[1:], dot, scope, where, piped)
            func = self.funcs.get(name)
            if func is None:
                raise RenderError(f"{where}: function \"{name}\" is not in the supported "
                                  "template subset (see scripts/render-chart.py)")
            args = [self._operand(op, dot, scope, where) for op in command[1:]] + list(piped)
            try:
                return func(*args, where=where)
            except RenderError:
                raise
            except TypeError as exc:
                raise RenderError(f"{where}: wrong arguments for {name}: {exc}") from None
        if len(command) > 1 or piped:
            raise RenderError(f"{where}: {self._describe(head)} is not a function and takes "
                              "no arguments")
        return self._operand(head, dot, scope, where)

    def _and_or(self, name: str, ops: list, dot: Any, scope: _Scope, where: str,
                piped: tuple) -> Any:
        values: list[Callable[[], Any]] = [
            (lambda op=op: self._operand(op, dot, scope, where)) for op in ops
        ] + [(lambda v=v: v) for v in piped]
        if not values:
            raise RenderError(f"{where}: {name} needs arguments")
        result = None
        for get in values:
            result = get()
            if (name == "and") != truthy(result):
                return result
        return result

    @staticmethod
    def _describe(op: tuple) -> str:
        if op[0] == "field":
            return "." + ".".join(op[1])
        if op[0] == "var":
            return op[1][0]
        return repr(op[1])

    def _operand(self, op: tuple, dot: Any, scope: _Scope, where: str) -> Any:
        kind = op[0]
        if kind == "lit":
            return op[1]
        if kind == "field":
            return self._fields(dot, op[1], where, ".")
        if kind == "var":
            name, fields = op[1]
            return self._fields(scope.get(name, where), fields, where, name)
        if kind == "pipe":
            return self._eval_commands(op[1], dot, scope)
        if kind == "func":
            return self._command([op], dot, scope, where, ())
        raise RenderError(f"{where}: cannot evaluate {op!r}")

    @staticmethod
    def _fields(value: Any, fields: list[str], where: str, start: str) -> Any:
        path = start
        for name in fields:
            if value is None:
                raise RenderError(f"{where}: nil pointer evaluating {path}.{name} "
                                  f"({path} is not set)")
            if not isinstance(value, dict):
                raise RenderError(f"{where}: can't evaluate field {name} in "
                                  f"{go_str(value)!r} ({path})")
            value = value.get(name)
            path = f"{path}.{name}" if path != "." else f".{name}"
        return value

    def include(self, name: str, data: Any, where: str) -> str:
        body = self.defines.get(name)
        if body is None:
            raise RenderError(f"{where}: no template named \"{name}\"")
        if self.depth >= _MAX_INCLUDE_DEPTH:
            raise RenderError(f"{where}: include of \"{name}\" nests too deep")
        self.depth += 1
        try:
            return self.execute(body, data)
        finally:
            self.depth -= 1

    # -- functions

    def _functions(self) -> dict[str, Callable]:
        def need_str(value: Any) -> str:
            """A function's string argument: nil is empty, other values as toString."""
            if value is None:
                return ""
            if isinstance(value, str):
                return value
            return sprig_str(value)

        def f_include(name, data, where):
            return self.include(name, data, where)

        def f_required(message, value, where):
            if value is None or (isinstance(value, str) and value == ""):
                raise RenderError(f"{where}: {message}")
            return value

        def f_fail(message, where):
            raise RenderError(f"{where}: {message}")

        def f_empty(value, where):
            return not truthy(value)

        def f_default(fallback, *value, where):
            if not value or not truthy(value[0]):
                return fallback
            return value[0]

        def f_coalesce(*values, where):
            for v in values:
                if truthy(v):
                    return v
            return None

        def f_ternary(yes, no, cond, where):
            return yes if truthy(cond) else no

        def f_not(value, where):
            return not truthy(value)

        def comparable(a, b, where):
            if isinstance(a, bool) or isinstance(b, bool):
                if not (isinstance(a, bool) and isinstance(b, bool)):
                    raise RenderError(f"{where}: incompatible types for comparison")
                return a, b
            if isinstance(a, (int, float)) and isinstance(b, (int, float)):
                # Go compares an integer with a float64 as an error (values are float64 in
                # helm, literals integers: `eq .Values.n 1` fails there, so it fails here).
                if isinstance(a, int) != isinstance(b, int):
                    raise RenderError(f"{where}: incompatible types for comparison "
                                      f"({go_str(a)} and {go_str(b)}; use int to convert)")
                return a, b
            if a is None or b is None:
                return a, b
            if type(a) is not type(b):
                raise RenderError(f"{where}: incompatible types for comparison "
                                  f"({go_str(a)!r} and {go_str(b)!r})")
            return a, b

        def f_eq(first, *others, where):
            if not others:
                raise RenderError(f"{where}: eq needs two arguments")
            for other in others:
                a, b = comparable(first, other, where)
                if a == b:
                    return True
            return False

        def f_ne(a, b, where):
            a, b = comparable(a, b, where)
            return a != b

        def ordered(a, b, where):
            a, b = comparable(a, b, where)
            if a is None or b is None or isinstance(a, (bool, list, dict)):
                raise RenderError(f"{where}: invalid type for comparison")
            return a, b

        def f_lt(a, b, where):
            a, b = ordered(a, b, where)
            return a < b

        def f_le(a, b, where):
            a, b = ordered(a, b, where)
            return a <= b

        def f_gt(a, b, where):
            a, b = ordered(a, b, where)
            return a > b

        def f_ge(a, b, where):
            a, b = ordered(a, b, where)
            return a >= b

        def f_len(value, where):
            if value is None:
                return 0
            if not isinstance(value, (str, list, dict)):
                raise RenderError(f"{where}: len of {go_str(value)!r}")
            return len(value)

        def f_index(collection, *keys, where):
            value = collection
            for key in keys:
                if value is None:
                    return None
                if isinstance(value, dict):
                    value = value.get(key)
                elif isinstance(value, list):
                    i = int(key)
                    if not 0 <= i < len(value):
                        raise RenderError(f"{where}: index {i} out of range")
                    value = value[i]
                else:
                    raise RenderError(f"{where}: can't index {go_str(value)!r}")
            return value

        def f_has_key(mapping, key, where):
            return isinstance(mapping, dict) and key in mapping

        def f_list(*values, where):
            return list(values)

        def f_dict(*pairs, where):
            if len(pairs) % 2:
                raise RenderError(f"{where}: dict needs key/value pairs")
            return {sprig_str(pairs[i]): pairs[i + 1] for i in range(0, len(pairs), 2)}

        def f_quote(*values, where):
            return " ".join(go_quote(sprig_str(v)) for v in values if v is not None)

        def f_squote(*values, where):
            return " ".join(f"'{sprig_str(v)}'" for v in values if v is not None)

        def f_print(*values, where):
            # fmt.Sprint: spaces between operands when neither side is a string.
            out = ""
            for i, v in enumerate(values):
                if i > 0 and not isinstance(v, str) and not isinstance(values[i - 1], str):
                    out += " "
                out += go_print_nested(v) if v is None else go_str(v)
            return out

        def f_printf(fmt, *args, where):
            out = []
            i = 0
            arg = 0
            while i < len(fmt):
                ch = fmt[i]
                if ch != "%":
                    out.append(ch)
                    i += 1
                    continue
                verb = fmt[i + 1] if i + 1 < len(fmt) else ""
                i += 2
                if verb == "%":
                    out.append("%")
                    continue
                if arg >= len(args):
                    out.append(f"%!{verb}(MISSING)")
                    continue
                value = args[arg]
                arg += 1
                if verb in ("s", "v"):
                    out.append(go_print_nested(value) if value is None else go_str(value))
                elif verb == "d":
                    if isinstance(value, bool) or not isinstance(value, int):
                        out.append(f"%!d({go_str(value)})")
                    else:
                        out.append(str(value))
                elif verb == "q":
                    out.append(go_quote(go_str(value)))
                else:
                    raise RenderError(f"{where}: printf verb %{verb} is not supported")
            if arg < len(args):
                out.append("%!(EXTRA " + ", ".join(go_str(a) for a in args[arg:]) + ")")
            return "".join(out)

        def f_to_string(value, where):
            return sprig_str(value)

        def f_int(value, where):
            if value is None:
                return 0
            if isinstance(value, bool):
                return int(value)
            if isinstance(value, (int, float)):
                return int(value)
            if isinstance(value, str):
                try:
                    return int(float(value)) if value.strip() else 0
                except ValueError:
                    return 0
            return 0

        def number(value, where):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise RenderError(f"{where}: {go_str(value)!r} is not a number")
            return int(value)

        def f_add(*values, where):
            return sum(number(v, where) for v in values)

        def f_sub(a, b, where):
            return number(a, where) - number(b, where)

        def f_to_yaml(value, where):
            return to_yaml(value)

        def f_to_json(value, where):
            return to_json(value)

        def f_indent(width, text, where):
            pad = " " * number(width, where)
            return pad + need_str(text).replace("\n", "\n" + pad)

        def f_nindent(width, text, where):
            return "\n" + f_indent(width, text, where=where)

        def f_trim(text, where):
            return need_str(text).strip()

        def f_trunc(length, text, where):
            text = need_str(text)
            n = number(length, where)
            if n >= 0:
                return text[:n]
            return text[n:] if len(text) > -n else text

        def f_trim_suffix(suffix, text, where):
            text = need_str(text)
            return text[: -len(suffix)] if suffix and text.endswith(suffix) else text

        def f_trim_prefix(prefix, text, where):
            text = need_str(text)
            return text[len(prefix):] if prefix and text.startswith(prefix) else text

        def f_replace(old, new, text, where):
            return need_str(text).replace(old, new)

        def f_lower(text, where):
            return need_str(text).lower()

        def f_upper(text, where):
            return need_str(text).upper()

        def f_has_prefix(prefix, text, where):
            return need_str(text).startswith(prefix)

        def f_has_suffix(suffix, text, where):
            return need_str(text).endswith(suffix)

        def f_contains(sub, text, where):
            return sub in need_str(text)

        def f_b64enc(text, where):
            return base64.b64encode(need_str(text).encode()).decode()

        def f_sha256sum(text, where):
            return hashlib.sha256(need_str(text).encode()).hexdigest()

        return {
            "include": f_include, "required": f_required, "fail": f_fail,
            "default": f_default, "empty": f_empty, "coalesce": f_coalesce,
            "ternary": f_ternary, "not": f_not, "eq": f_eq, "ne": f_ne, "lt": f_lt,
            "le": f_le, "gt": f_gt, "ge": f_ge, "len": f_len, "index": f_index,
            "hasKey": f_has_key, "list": f_list, "dict": f_dict, "quote": f_quote,
            "squote": f_squote, "print": f_print, "printf": f_printf,
            "toString": f_to_string, "int": f_int, "add": f_add, "sub": f_sub,
            "toYaml": f_to_yaml, "toJson": f_to_json, "indent": f_indent,
            "nindent": f_nindent, "trim": f_trim, "trunc": f_trunc,
            "trimSuffix": f_trim_suffix, "trimPrefix": f_trim_prefix, "replace": f_replace,
            "lower": f_lower, "upper": f_upper, "hasPrefix": f_has_prefix,
            "hasSuffix": f_has_suffix, "contains": f_contains, "b64enc": f_b64enc,
            "sha256sum": f_sha256sum,
        }


def render_string(template: str, data: Any, name: str = "template") -> str:
    """Renders one template text against `data` (for tests and for KServe's placeholders,
    which are the same Go template language)."""
    engine = Engine()
    nodes = engine.parse(template, name)
    return engine.execute(nodes, data)


# --------------------------------------------------------------------------- values


def _require_yaml() -> None:
    if yaml is None:
        raise RenderError("PyYAML is needed (pip install PyYAML)")


def load_yaml_file(path: Path) -> Any:
    _require_yaml()
    try:
        with open(path, encoding="utf-8") as handle:
            return yaml.safe_load(handle)
    except OSError as exc:
        raise RenderError(f"cannot read {path}: {exc}") from None
    except yaml.YAMLError as exc:
        raise RenderError(f"{path} is not valid YAML: {exc}") from None


def helm_numbers(value: Any) -> Any:
    """Values as helm holds them: every number a float64."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return float(value)
    if isinstance(value, list):
        return [helm_numbers(v) for v in value]
    if isinstance(value, dict):
        return {str(k): helm_numbers(v) for k, v in value.items()}
    return value


def merge_values(base: dict, override: dict) -> dict:
    """Helm's coalescing: maps merge key by key, anything else replaces, null removes."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_values(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _split_unescaped(text: str, sep: str) -> list[str]:
    parts, current, i = [], "", 0
    depth = 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text):
            current += text[i:i + 2]
            i += 2
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        if ch == sep and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
        i += 1
    parts.append(current)
    return parts


def _unescape(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text)


def _typed(text: str, as_string: bool) -> Any:
    """A --set value with helm's typing: true/false, null, integers; else a string."""
    if as_string:
        return text
    if text in ("true", "false"):
        return text == "true"
    if text == "null":
        return None
    if re.fullmatch(r"[-+]?\d+", text) and not re.fullmatch(r"[-+]?0\d+", text):
        return float(int(text))
    return text


def parse_set(expression: str, as_string: bool = False) -> dict:
    """One --set option (`a.b=1,c[0].d=x,e={p,q}`) as a values overlay."""
    result: dict = {}
    for assignment in _split_unescaped(expression, ","):
        if not assignment:
            continue
        if "=" not in assignment:
            raise RenderError(f"--set {expression!r}: '{assignment}' has no '='")
        key, raw = assignment.split("=", 1)
        if raw.startswith("{") and raw.endswith("}"):
            inner = raw[1:-1]
            value: Any = [_typed(_unescape(p), as_string) for p in _split_unescaped(inner, ",")
                          if p != ""] if inner else []
        else:
            value = _typed(_unescape(raw), as_string)
        path: list = []
        for part in re.split(r"(?<!\\)\.", key):
            m = re.fullmatch(r"(.+?)((?:\[\d+\])*)", part)
            if not m or not part:
                raise RenderError(f"--set {expression!r}: bad key '{key}'")
            path.append(_unescape(m.group(1)))
            path.extend(int(i) for i in re.findall(r"\[(\d+)\]", m.group(2)))
        _assign_path(result, path, value, expression)
    return result


def _assign_path(target: Any, path: list, value: Any, expression: str) -> None:
    for i, step in enumerate(path):
        last = i == len(path) - 1
        nxt = None if last else path[i + 1]
        empty = [] if isinstance(nxt, int) else {}
        if isinstance(step, int):
            if not isinstance(target, list):
                raise RenderError(f"--set {expression!r}: index on a non-list")
            while len(target) <= step:
                target.append(None)
            if last:
                target[step] = value
            else:
                if not isinstance(target[step], (dict, list)):
                    target[step] = empty
                target = target[step]
        else:
            if not isinstance(target, dict):
                raise RenderError(f"--set {expression!r}: key on a non-map")
            if last:
                target[step] = value
            else:
                if not isinstance(target.get(step), (dict, list)):
                    target[step] = empty
                target = target[step]


def _merge_set(values: dict, overlay: dict) -> dict:
    """Merges a --set overlay: unlike -f files, lists set by index merge into what is there."""
    out = copy.deepcopy(values)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge_set(out[key], value)
        elif isinstance(value, list) and isinstance(out.get(key), list) and None in value:
            merged = copy.deepcopy(out[key])
            for i, item in enumerate(value):
                if item is None:
                    continue
                while len(merged) <= i:
                    merged.append(None)
                if isinstance(item, dict) and isinstance(merged[i], dict):
                    merged[i] = _merge_set(merged[i], item)
                else:
                    merged[i] = item
            out[key] = merged
        elif value is None:
            out.pop(key, None)
        else:
            out[key] = copy.deepcopy(value)
    return out


def chart_values(chart: Path, values_files=(), sets=(), set_strings=()) -> dict:
    """The merged values for a render: values.yaml, -f files, --set, --set-string."""
    values = load_yaml_file(chart / "values.yaml") or {}
    if not isinstance(values, dict):
        raise RenderError(f"{chart / 'values.yaml'}: top level must be a map")
    for path in values_files:
        extra = load_yaml_file(Path(path)) or {}
        if not isinstance(extra, dict):
            raise RenderError(f"{path}: top level must be a map")
        values = merge_values(values, extra)
    for expression in sets:
        values = _merge_set(values, parse_set(expression))
    for expression in set_strings:
        values = _merge_set(values, parse_set(expression, as_string=True))
    return values


def check_values_schema(chart: Path, values: dict) -> Optional[str]:
    """Checks values against the chart's values.schema.json, as helm does; returns a note
    when the check could not run (no jsonschema), raises RenderError when values fail it."""
    schema_path = chart / "values.schema.json"
    if not schema_path.is_file():
        return None
    try:
        import jsonschema
    except ImportError:
        return "values.schema.json not checked: the jsonschema package is not installed"
    schema = json.loads(schema_path.read_text(encoding="utf-8"))
    validator = jsonschema.Draft7Validator(schema)
    errors = sorted(validator.iter_errors(integral_floats_to_int(values)),
                    key=lambda e: list(e.absolute_path))
    if errors:
        lines = []
        for error in errors:
            where = ".".join(str(p) for p in error.absolute_path) or "(root)"
            lines.append(f"- {where}: {error.message}")
        raise RenderError("values don't meet the specifications of the schema(s) in "
                          f"{schema_path}:\n" + "\n".join(lines))
    return None


# --------------------------------------------------------------------------- chart

# Helm's InstallOrder: documents are written (and applied) kind by kind in this order;
# unknown kinds (custom resources) come last.
INSTALL_ORDER = [
    "PriorityClass", "Namespace", "NetworkPolicy", "ResourceQuota", "LimitRange",
    "PodSecurityPolicy", "PodDisruptionBudget", "ServiceAccount", "Secret", "SecretList",
    "ConfigMap", "StorageClass", "PersistentVolume", "PersistentVolumeClaim",
    "CustomResourceDefinition", "ClusterRole", "ClusterRoleList", "ClusterRoleBinding",
    "ClusterRoleBindingList", "Role", "RoleList", "RoleBinding", "RoleBindingList", "Service",
    "DaemonSet", "Pod", "ReplicationController", "ReplicaSet", "Deployment",
    "HorizontalPodAutoscaler", "StatefulSet", "Job", "CronJob", "IngressClass", "Ingress",
    "APIService", "MutatingWebhookConfiguration", "ValidatingWebhookConfiguration",
]

_DOC_SPLIT = re.compile(r"(?:^|\s*\n)---\s*")


def _chart_meta(chart: Path) -> dict:
    meta = load_yaml_file(chart / "Chart.yaml")
    if not isinstance(meta, dict) or "name" not in meta or "version" not in meta:
        raise RenderError(f"{chart / 'Chart.yaml'}: needs at least name and version")
    return meta


def render_chart(chart: Path | str, values_files=(), sets=(), set_strings=(),
                 release: str = "ferrum", namespace: str = "default") -> list[tuple[str, str]]:
    """Renders the chart; returns (source, document text) pairs in helm's output order."""
    chart = Path(chart)
    meta = _chart_meta(chart)
    values = chart_values(chart, values_files, sets, set_strings)
    check_values_schema(chart, values)
    top = {
        "Values": helm_numbers(values),
        "Release": {"Name": release, "Namespace": namespace, "Service": "Helm",
                    "IsInstall": True, "IsUpgrade": False, "Revision": 1},
        "Chart": {"Name": meta["name"], "Version": str(meta["version"]),
                  "AppVersion": str(meta.get("appVersion", "")),
                  "Description": meta.get("description", ""),
                  "KubeVersion": meta.get("kubeVersion", ""), "Type": meta.get("type", "")},
    }
    templates_dir = chart / "templates"
    files = sorted(p for p in templates_dir.rglob("*") if p.is_file())
    engine = Engine()
    parsed = []
    for path in files:
        rel = path.relative_to(chart).as_posix()
        if path.suffix not in (".yaml", ".yml", ".tpl", ".txt", ".json"):
            continue
        source = f"{meta['name']}/{rel}"
        nodes = engine.parse(path.read_text(encoding="utf-8"), source)
        parsed.append((path, source, nodes))
    documents: list[tuple[int, int, str, str]] = []
    for order, (path, source, nodes) in enumerate(parsed):
        if path.name.startswith("_") or path.name == "NOTES.txt" or path.suffix == ".tpl":
            continue
        dot = dict(top, Template={"Name": source, "BasePath": f"{meta['name']}/templates"})
        text = engine.execute(nodes, dot).replace("<no value>", "")
        for doc in _DOC_SPLIT.split(text):
            if not doc.strip():
                continue
            body = doc.strip() + "\n"
            kind = _kind_of(body, source)
            rank = INSTALL_ORDER.index(kind) if kind in INSTALL_ORDER else len(INSTALL_ORDER)
            documents.append((rank, order, source, body))
    documents.sort(key=lambda d: (d[0], d[1]))
    return [(source, body) for _, _, source, body in documents]


def _kind_of(body: str, source: str) -> str:
    try:
        doc = yaml.safe_load(body)
    except yaml.YAMLError as exc:
        raise RenderError(f"{source} rendered to invalid YAML: {exc}\n--- rendered ---\n{body}")
    if doc is None:
        return ""
    if not isinstance(doc, dict):
        raise RenderError(f"{source} rendered a document that is not a map:\n{body}")
    return str(doc.get("kind", ""))


def to_text(documents: list[tuple[str, str]]) -> str:
    """The documents as `helm template` prints them."""
    return "".join(f"---\n# Source: {source}\n{body}" for source, body in documents)


# --------------------------------------------------------------------------- command line


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        description="Render a Helm chart (in the template subset documented in this file) "
                    "to plain manifests, as `helm template` does.")
    parser.add_argument("chart", help="chart folder (holding Chart.yaml)")
    parser.add_argument("-f", "--values", action="append", default=[], metavar="FILE",
                        help="values file merged over the chart's values.yaml (repeatable)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="value set on the command line (repeatable; a,b=c)")
    parser.add_argument("--set-string", action="append", default=[], metavar="KEY=VALUE",
                        help="like --set, always a string")
    parser.add_argument("--release-name", default="ferrum", help="release name (ferrum)")
    parser.add_argument("-n", "--namespace", default="default", help="namespace (default)")
    parser.add_argument("-o", "--output", metavar="FILE", help="write here, not stdout")
    args = parser.parse_args(argv)
    if (Path(args.chart) / "values.schema.json").is_file() and \
            importlib.util.find_spec("jsonschema") is None:
        print("render-chart: note: values.schema.json not checked: the jsonschema package "
              "is not installed", file=sys.stderr)
    try:
        _require_yaml()
        text = to_text(render_chart(args.chart, args.values, args.set, args.set_string,
                                    args.release_name, args.namespace))
    except RenderError as exc:
        print(f"render-chart: error: {exc}", file=sys.stderr)
        return 1
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
