"""Typed dataclasses from YAML, the way the Go services' yaml.v3 decodes into structs: an
unknown key is a warning naming its dotted path, a bad value a ``ConfigError`` naming the
key (never showing a secret), ``key:`` with nothing after it keeps the default, durations
are Go duration strings. Used by lkmedia.service.config (the egress keys) and
lkmedia.service.ingress_config (the ingress keys)."""
from __future__ import annotations

import dataclasses
import logging
import math
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import field
from typing import Any, NewType

import yaml

from lkmedia.redact import redact_key

log = logging.getLogger("lkmedia.service.config")

Seconds = NewType("Seconds", float)
"""A Go ``time.Duration`` read from a string like ``"3h"`` or ``"150ms"``, kept in seconds."""


class ConfigError(ValueError):
    """A config that cannot start the service; the message names the key."""


def _secret(default: Any = "") -> Any:
    return field(default=default, repr=False, metadata={"secret": True})


def _partial(default: str = "") -> Any:
    """An identifier such as an access key: shown as {abc...xyz} in the redacted view."""
    return field(default=default, repr=False, metadata={"partial": True})


def _checked(default: Any, check: typing.Callable[[Any], str | None]) -> Any:
    return field(default=default, metadata={"check": check})


def _port(v: int) -> str | None:
    return None if 0 <= v <= 65535 else "must be a port number 0-65535"


def _non_negative(v: float) -> str | None:
    return None if v >= 0 else "must not be negative"


def _positive(v: float) -> str | None:
    return None if v > 0 else "must be more than 0"


def _utilization(v: float) -> str | None:
    return None if 0 < v <= 1 else "must be in (0, 1]"


_DURATION = re.compile(r"([0-9]*(?:\.[0-9]*)?)([a-zµμ]+)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """Go's ``time.ParseDuration`` (``"1h30m"``, ``"150ms"``, ``"0"``) in seconds; ValueError if bad."""
    s = text.strip()
    sign = -1.0 if s.startswith("-") else 1.0
    s = s[1:] if s[:1] in "+-" else s
    if s == "0":
        return 0.0
    pos, total = 0, 0.0
    while pos < len(s):
        m = _DURATION.match(s, pos)
        if not m or m.group(1) in ("", ".") or m.group(2) not in _UNITS:
            raise ValueError(f"not a duration like '90s', '1h30m' or '150ms': {text!r}")
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if not s:
        raise ValueError("empty duration")
    return sign * total


def _is_secret(f: dataclasses.Field[Any]) -> bool:
    return bool(f.metadata.get("secret") or f.metadata.get("partial"))


class _Decoder:
    """Walks the composed YAML nodes against the dataclasses, as yaml.v3 decodes into Go structs."""

    def __init__(self) -> None:
        self.warnings: list[str] = []
        self.present: set[str] = set()
        self._loader = yaml.SafeLoader("")

    def warn(self, msg: str) -> None:
        self.warnings.append(msg)
        log.warning("config: %s", msg)

    def struct(self, cls: type, node: yaml.Node, path: str) -> Any:
        if not isinstance(node, yaml.MappingNode):
            raise ConfigError(f"{path or 'config'}: must be a mapping of keys, got {_kind(node)}")
        seen: set[str] = set()
        for knode, _ in node.value:
            if knode.tag != "tag:yaml.org,2002:merge" and (key := str(knode.value)) in seen:
                kpath = f"{path}.{key}" if path else key  # yaml.v3: "mapping key already defined"
                raise ConfigError(f"{kpath}: key given twice (line {knode.start_mark.line + 1})")
            seen.add(str(knode.value))
        self._loader.flatten_mapping(node)  # YAML merge keys (<<), as yaml.v3 supports
        pairs = {str(k.value): (k, v) for k, v in node.value}  # a key after a merge overrides it
        hints = typing.get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
        values: dict[str, Any] = {}
        for key, (knode, vnode) in pairs.items():
            kpath = f"{path}.{key}" if path else key
            if key not in fields:
                self.warn(f"unknown key {kpath!r} (line {knode.start_mark.line + 1}) ignored")
                continue
            f = fields[key]
            value = self.value(hints[key], vnode, kpath, _is_secret(f))
            if value is None and not _optional(hints[key]):
                continue  # `key:` with nothing after it leaves the default (or the env value), as in Go
            if not path:
                self.present.add(key)
            check = f.metadata.get("check")
            if value is not None and check is not None and (problem := check(value)):
                shown = "" if _is_secret(f) else f", got {_show(value)}"
                raise ConfigError(f"{kpath}: {problem}{shown}")
            values[key] = value
        return cls(**values)

    def value(self, tp: Any, node: yaml.Node, path: str, secret: bool = False) -> Any:
        if isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null":
            return None
        if _optional(tp):
            tp = next(a for a in typing.get_args(tp) if a is not type(None))
        if tp is Any:
            return self._loader.construct_document(node)
        if dataclasses.is_dataclass(tp):
            return self.struct(tp, node, path)  # type: ignore[arg-type]
        origin = typing.get_origin(tp)
        if origin is dict:
            if not isinstance(node, yaml.MappingNode):
                raise ConfigError(f"{path}: must be a mapping, got {_kind(node)}")
            vtype = typing.get_args(tp)[1]
            out = {}
            for k, v in node.value:
                out[str(k.value)] = self.value(vtype, v, f"{path}.{k.value}")
            return out
        if origin is list:
            if not isinstance(node, yaml.SequenceNode):
                raise ConfigError(f"{path}: must be a list, got {_kind(node)}")
            return [self.value(typing.get_args(tp)[0], v, f"{path}[{i}]") for i, v in enumerate(node.value)]
        if not isinstance(node, yaml.ScalarNode):
            raise ConfigError(f"{path}: must be a single value, got {_kind(node)}")
        return self.scalar(tp, node, path, secret)

    def scalar(self, tp: Any, node: yaml.ScalarNode, path: str, secret: bool) -> Any:
        tag = node.tag.rsplit(":", 1)[-1]
        shown = "" if secret else f", got {node.value!r}"
        if tp is str:
            return node.value  # any scalar, as written (yaml.v3 does the same)
        if tp is Seconds:
            if tag == "int" and self._loader.construct_object(node) == 0:
                return Seconds(0.0)
            if tag != "str":
                raise ConfigError(f"{path}: must be a duration string like '3h' or '500ms'{shown}")
            try:
                return Seconds(parse_duration(node.value))
            except ValueError:
                raise ConfigError(f"{path}: must be a duration string like '3h' or '500ms'{shown}") from None
        if tp is bool:
            if tag != "bool":
                raise ConfigError(f"{path}: must be true or false{shown}")
            return self._loader.construct_object(node)
        if tp is int:
            if tag != "int":
                raise ConfigError(f"{path}: must be an integer{shown}")
            return int(self._loader.construct_object(node))
        if tp is float:
            if tag not in ("int", "float"):
                raise ConfigError(f"{path}: must be a number{shown}")
            v = float(self._loader.construct_object(node))
            if not math.isfinite(v):
                raise ConfigError(f"{path}: must be a finite number{shown}")
            return v
        raise TypeError(f"no decoder for {tp!r} at {path}")


def _optional(tp: Any) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in typing.get_args(tp)


def _kind(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    return "a list" if isinstance(node, yaml.SequenceNode) else "a single value"


def _show(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def _redact(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out: dict[str, Any] = {}
        for f in dataclasses.fields(obj):
            v = getattr(obj, f.name)
            if f.name == "warnings":
                continue
            if f.metadata.get("secret"):
                out[f.name] = "***" if v else ""
            elif f.metadata.get("partial"):
                out[f.name] = redact_key(v) if v else ""
            else:
                out[f.name] = _redact(v)
        return out
    if isinstance(obj, dict):
        return {k: _redact(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_redact(v) for v in obj]
    return obj


def compose(text: str, source: str) -> yaml.Node | None:
    """The YAML node tree of ``text`` (None when empty); a syntax error names the place,
    never the line itself (it may hold a secret)."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{source}: not valid YAML{where}: {e.problem or e.context}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: not valid YAML ({type(e).__name__})") from None
    if root is None or (isinstance(root, yaml.ScalarNode) and root.tag.endswith(":null")):
        return None
    return root


def read_source(config_file: str | None, config_body: str | None, env: Mapping[str, str],
                prefix: str) -> tuple[str, str]:
    """(text, source) as the Go services' ``getConfig`` resolves them: a body (flag, then
    ``<prefix>_CONFIG_BODY``) wins over a file (flag, then ``<prefix>_CONFIG_FILE``)."""
    body = config_body or env.get(f"{prefix}_CONFIG_BODY") or ""
    path = config_file or env.get(f"{prefix}_CONFIG_FILE") or ""
    if body:
        if path:
            log.warning("config: both a config body and a config file (%s) given; using the body, "
                        "as the Go %s does", path, prefix.lower())
        return body, f"{prefix}_CONFIG_BODY" if not config_body else "--config-body"
    if not path:
        raise ConfigError(f"no config: pass --config FILE, or set {prefix}_CONFIG_FILE or {prefix}_CONFIG_BODY")
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read(), path
    except OSError as e:
        raise ConfigError(f"config file {path}: {e.strerror or e}") from None
