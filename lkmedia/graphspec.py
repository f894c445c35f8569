"""A graph described in YAML, turned into a built :class:`~lkmedia.core.Graph`.

Why: jobs and demos are data, not code; one loader checks them before any frame
flows and turns every mistake into one :class:`GraphSpecError` that names it.

Schema::

    nodes:
      <name>: {type: <type>, <constructor args...>}
      src: {type: synthetic, duration: ${SECONDS:-5}}
    links:                     # chains; each endpoint is "node" or "node.port"
      - [src.video, venc, mp4]
      - [venc, hls]
      - {chain: [src.audio, aenc, mp4], policy: block, capacity: 16}

``type`` is a name from :data:`REGISTRY` (or ``package.module:Class``). The other
keys are the class's constructor arguments, checked against its signature; the
node's name is its key. In a chain "node.port" means that node's output port when
it feeds the next endpoint and its input port when it is fed. ``policy`` and
``capacity`` apply to every link of the chain.

``${VAR}`` (or ``${VAR:-default}``) is replaced from ``--var k=v``, else the
environment, else the default, in the YAML text before it is parsed (comment lines
excepted): unquoted, it takes the YAML type of its value (``duration: ${SECONDS}`` is
a number); quote it where the value may hold YAML syntax.

Output paths are relative to the output directory (``out_dir``, else the YAML file's
directory) and may not contain ``..``; input paths are relative to the YAML file's
directory. Outputs are checked for writability and inputs for readability at load.
A file sink's path may be a LiveKit filename template ({room_name}-{time}.mp4, or "dir/"),
filled from the top-level ``fields`` mapping; it can never resolve outside the output
directory.
"""
from __future__ import annotations

import functools
import importlib
import inspect
import itertools
import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .core import Graph, LkmediaError, Node
from .core.errors import BuildError, LinkError
from .sinks.template import render_filename


class GraphSpecError(LkmediaError):
    """The YAML graph cannot be loaded or built; the message says where and why."""


@dataclass(frozen=True)
class NodeType:
    """Where a node class lives and which constructor arguments are paths."""

    target: str  # "package.module:Class", imported only when used
    files: tuple[str, ...] = ()  # output file paths
    dirs: tuple[str, ...] = ()  # output directory paths
    inputs: tuple[str, ...] = ()  # input file paths (URLs are left alone)
    names: tuple[str, ...] = ()  # bare file names inside an output directory


#: Type names usable in YAML. Lazy import paths, so a missing module breaks only its types.
REGISTRY: dict[str, NodeType] = {
    "synthetic": NodeType("lkmedia.sources.synthetic:SyntheticSource"),
    "file_source": NodeType("lkmedia.sources.file:FileSource", inputs=("url",)),
    "decoder": NodeType("lkmedia.nodes.decode:Decoder"),
    "video_encoder": NodeType("lkmedia.nodes.encode:VideoEncoder"),
    "audio_encoder": NodeType("lkmedia.nodes.encode:AudioEncoder"),
    "scale": NodeType("lkmedia.nodes.convert:Scale"),
    "pixel_format": NodeType("lkmedia.nodes.convert:PixelFormat"),
    "resample": NodeType("lkmedia.nodes.convert:Resample"),
    "fps": NodeType("lkmedia.nodes.convert:FpsConverter"),
    "audio_mixer": NodeType("lkmedia.nodes.audio_mix:AudioMixer"),
    "compositor": NodeType("lkmedia.nodes.compose:Compositor"),
    "tee": NodeType("lkmedia.nodes.tee:Tee"),
    "file": NodeType("lkmedia.sinks.file:FileSink", files=("path",)),
    "hls": NodeType("lkmedia.sinks.segments:HLSSink", dirs=("directory",),
                    names=("playlist_name", "live_playlist_name", "filename_prefix")),
    "images": NodeType("lkmedia.sinks.images:ImageSink", dirs=("directory",),
                       names=("filename_prefix",)),
    "websocket": NodeType("lkmedia.sinks.websocket:WebSocketSink"),
    "stream": NodeType("lkmedia.sinks.stream:StreamSink"),
}

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")
_TOP_KEYS = {"nodes", "links", "fields"}


@dataclass
class LoadedGraph:
    """A built graph plus what the loader resolved (for summaries and tests)."""

    graph: Graph
    outputs: dict[str, list[Path]] = field(default_factory=dict)  # node -> output paths


# -- public API ---------------------------------------------------------------
def load_graph(
    path: str | os.PathLike[str],
    variables: Mapping[str, str] | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
) -> LoadedGraph:
    """Read, check and build the graph described by the YAML file at ``path``."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise GraphSpecError(f"cannot read graph file {str(p)!r}: {_reason(e)}") from None
    return graph_from_yaml(text, base_dir=p.resolve().parent, variables=variables,
                           out_dir=out_dir, env=env, source=str(p))


def graph_from_yaml(
    text: str,
    base_dir: str | os.PathLike[str] = ".",
    variables: Mapping[str, str] | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    source: str = "<graph>",
) -> LoadedGraph:
    """Build a graph from YAML text. Relative inputs resolve against ``base_dir``,
    relative outputs against ``out_dir`` (default ``base_dir``)."""
    lookup = _Lookup(variables or {}, os.environ if env is None else env)
    text = substitute(text, lookup, source)
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise GraphSpecError(f"{source}: invalid YAML{where}: {problem}") from None
    if not isinstance(doc, dict):
        raise GraphSpecError(f"{source}: expected a mapping with 'nodes' and 'links' at the top")
    unknown = set(doc) - _TOP_KEYS
    if unknown:
        raise GraphSpecError(f"{source}: unknown top-level key(s) {', '.join(map(str, sorted(unknown)))} "
                             f"(expected {', '.join(sorted(_TOP_KEYS))})")
    base = Path(base_dir).resolve()
    out = Path(out_dir).resolve() if out_dir is not None else base
    fields = doc.get("fields") or {}
    if not isinstance(fields, dict):
        raise GraphSpecError(f"{source}: 'fields' must be a mapping like {{room_name: demo}}")
    builder = _Builder(source, base, out, {str(k): None if v is None else str(v) for k, v in fields.items()})
    return builder.build(doc.get("nodes"), doc.get("links"))


def known_types() -> list[str]:
    return sorted(REGISTRY)


def resolve_type(type_name: str) -> tuple[type[Node], NodeType]:
    """The class behind a type name; GraphSpecError if unknown or not importable."""
    if type_name in REGISTRY:
        spec = REGISTRY[type_name]
    elif ":" in type_name:
        spec = NodeType(type_name)
    else:
        raise GraphSpecError(f"unknown node type {type_name!r}; known types: {', '.join(known_types())}")
    mod_name, _, cls_name = spec.target.partition(":")
    try:
        mod = importlib.import_module(mod_name)
        cls = getattr(mod, cls_name)
    except ImportError as e:
        raise GraphSpecError(f"node type {type_name!r} is not available: cannot import {mod_name} ({e})") from None
    except AttributeError:
        raise GraphSpecError(f"node type {type_name!r} is not available: {mod_name} has no {cls_name}") from None
    if not (isinstance(cls, type) and issubclass(cls, Node)):
        raise GraphSpecError(f"node type {type_name!r}: {spec.target} is not a Node class")
    return cls, spec


# -- internals ----------------------------------------------------------------
def _reason(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return str(e) or type(e).__name__


class _Lookup:
    def __init__(self, cli: Mapping[str, str], env: Mapping[str, str]) -> None:
        self.layers = (cli, env)

    def get(self, name: str, default: str | None, where: str) -> str:
        for layer in self.layers:
            if name in layer:
                return str(layer[name])
        if default is not None:
            return default
        raise GraphSpecError(f"{where}: variable ${{{name}}} is not set "
                             f"(pass --var {name}=... or set it in the environment)")


def _value_of(m: re.Match[str], *, lookup: _Lookup, where: str) -> str:
    return lookup.get(m.group(1), m.group(2), where)


def substitute(text: str, lookup: _Lookup, source: str) -> str:
    """Replace ${VAR} in the YAML text (comment lines are left alone), before parsing,
    so that an unquoted ${VAR} takes the YAML type of its value."""
    lines = text.splitlines(keepends=True)
    for n, line in enumerate(lines):
        if "${" in line and not line.lstrip().startswith("#"):
            where = f"{source}, line {n + 1}"
            lines[n] = _VAR.sub(functools.partial(_value_of, lookup=lookup, where=where), line)
    return "".join(lines)


class _Builder:
    def __init__(self, source: str, base: Path, out: Path, fields: dict[str, str | None] | None = None) -> None:
        self.source = source
        self.base = base
        self.out = out
        self.fields = fields or {}
        self.graph = Graph()
        self.outputs: dict[str, list[Path]] = {}

    def err(self, msg: str) -> GraphSpecError:
        return GraphSpecError(f"{self.source}: {msg}")

    # -- nodes --------------------------------------------------------------
    def build(self, nodes: Any, links: Any) -> LoadedGraph:
        if not isinstance(nodes, dict) or not nodes:
            raise self.err("'nodes' must be a non-empty mapping of name -> {type: ..., args}")
        for name, body in nodes.items():
            self.add_node(str(name), body)
        if not isinstance(links, list) or not links:
            raise self.err("'links' must be a non-empty list of chains like [src.video, venc, mp4]")
        for i, link in enumerate(links, 1):
            self.add_link(i, link)
        try:
            self.graph.build()
        except (LinkError, BuildError) as e:
            raise self.err(f"the graph cannot run: {e}") from None
        return LoadedGraph(self.graph, self.outputs)

    def add_node(self, name: str, body: Any) -> None:
        if not _NAME.match(name):
            raise self.err(f"node name {name!r} must start with a letter and hold only letters, digits, _ and -")
        if not isinstance(body, dict) or "type" not in body:
            raise self.err(f"node {name!r} needs a mapping with a 'type' (one of {', '.join(known_types())})")
        args = {str(k): v for k, v in body.items() if k != "type"}
        type_name = str(body["type"])
        try:
            cls, spec = resolve_type(type_name)
        except GraphSpecError as e:
            raise self.err(f"node {name!r}: {e}") from None
        self.check_args(name, type_name, cls, args)
        self.resolve_paths(name, spec, args)
        try:
            node = cls(name=name, **args) if "name" in self.params(cls) else cls(**args)
        except (ValueError, TypeError, OSError, LkmediaError) as e:
            why = _reason(e)
            why = why[len(name) + 2:] if why.startswith(f"{name}: ") else why
            raise self.err(f"node {name!r} ({type_name}): {why}") from None
        node.name = name
        try:
            self.graph.add(node)
        except BuildError as e:
            raise self.err(str(e)) from None

    @staticmethod
    def params(node_cls: type) -> Mapping[str, inspect.Parameter]:
        return inspect.signature(node_cls).parameters

    def check_args(self, name: str, type_name: str, cls: type, args: dict[str, Any]) -> None:
        params = self.params(cls)
        takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
        named = {k: p for k, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        if "name" in args:
            raise self.err(f"node {name!r}: 'name' comes from the node's key; remove the argument")
        unknown = [a for a in args if a not in named]
        if unknown and not takes_any:
            allowed = ", ".join(k for k in named if k != "name") or "none"
            raise self.err(f"node {name!r} ({type_name}): unknown argument {unknown[0]!r}; it takes: {allowed}")
        missing = [k for k, p in named.items()
                   if p.default is p.empty and k not in args and k != "name"]
        if missing:
            raise self.err(f"node {name!r} ({type_name}): missing argument {missing[0]!r}")
        for k, v in list(args.items()):
            ann = str(named[k].annotation) if k in named else ""
            if isinstance(v, list) and "tuple" in ann:
                args[k] = tuple(v)

    def resolve_paths(self, name: str, spec: NodeType, args: dict[str, Any]) -> None:
        for key in spec.names:
            v = args.get(key)
            if isinstance(v, str) and ("/" in v or "\\" in v or v in (".", "..")):
                raise self.err(f"node {name!r}: {key} {v!r} must be a plain file name, not a path")
        for key in spec.files + spec.dirs:
            v = args.get(key)
            if not isinstance(v, (str, os.PathLike)) or _is_url(str(v)):
                continue
            if key in spec.files and ("{" in str(v) or str(v).endswith("/")):
                # A LiveKit filename template: {room_name}-{time}.mp4, or a directory "rec/".
                ext = str(args.get("format") or Path(str(v)).suffix or "mp4")
                try:
                    v = render_filename(str(v), self.fields, ext, str(self.out))
                except ValueError as e:
                    raise self.err(f"node {name!r}: {e}") from None
            rel = Path(v)
            if ".." in rel.parts:
                raise self.err(f"node {name!r}: output path {str(v)!r} contains '..'; "
                               "outputs stay inside the output directory")
            full = rel if rel.is_absolute() else self.out / rel
            _check_writable(full, key in spec.dirs, name, self.err)
            args[key] = str(full)
            self.outputs.setdefault(name, []).append(full)
        for key in spec.inputs:
            v = args.get(key)
            if not isinstance(v, (str, os.PathLike)) or _is_url(str(v)):
                continue
            full = Path(v) if Path(v).is_absolute() else self.base / v
            try:
                with open(full, "rb"):
                    pass
            except OSError as e:
                raise self.err(f"node {name!r}: cannot read input {str(v)!r}: {_reason(e)}") from None
            args[key] = str(full)

    # -- links --------------------------------------------------------------
    def add_link(self, i: int, link: Any) -> None:
        opts: dict[str, Any] = {}
        if isinstance(link, dict):
            chain = link.get("chain")
            extra = set(link) - {"chain", "policy", "capacity"}
            if extra:
                raise self.err(f"link {i}: unknown key(s) {', '.join(map(str, sorted(extra)))} "
                               "(takes chain, policy, capacity)")
            if "policy" in link:
                opts["policy"] = str(link["policy"])
                if opts["policy"] not in ("block", "drop-oldest", "latest"):
                    raise self.err(f"link {i}: policy {opts['policy']!r} must be block, drop-oldest or latest")
            if "capacity" in link:
                cap = link["capacity"]
                if not isinstance(cap, int) or isinstance(cap, bool) or cap < 1:
                    raise self.err(f"link {i}: capacity must be a whole number of at least 1")
                opts["capacity"] = cap
        else:
            chain = link
        if not isinstance(chain, list) or len(chain) < 2 or not all(isinstance(e, str) for e in chain):
            raise self.err(f"link {i}: a chain is a list of at least two endpoints like [src.video, venc, mp4]")
        for a, b in itertools.pairwise(chain):
            src = self.endpoint(i, a, "out")
            dst = self.endpoint(i, b, "in")
            try:
                self.graph.link(src, dst, **opts)
            except (LinkError, BuildError, ValueError) as e:
                raise self.err(f"link {i} ({a} -> {b}): {e}") from None

    def endpoint(self, i: int, text: str, role: str) -> Any:
        node_name, _, port = text.strip().partition(".")
        node = self.graph.nodes.get(node_name)
        if node is None:
            raise self.err(f"link {i}: unknown node {node_name!r} (nodes: {', '.join(self.graph.nodes)})")
        if not port:
            return node
        ins, outs = node.inputs, node.outputs
        if role == "out" and port in outs:
            return outs[port]
        if role == "in" and port in ins:
            return ins[port]
        if port in outs or port in ins:
            return node  # the port names the other side of a chain's middle node
        raise self.err(f"link {i}: {node_name} has no port {port!r} "
                       f"(outputs: {', '.join(outs) or 'none'}; inputs: {', '.join(ins) or 'none'})")


def _is_url(v: str) -> bool:
    return "://" in v


def _check_writable(path: Path, is_dir: bool, node: str, err: Any) -> None:
    """Fail now, not after minutes of encoding, if ``path`` cannot be written.
    The directory that would hold it is created if missing."""
    target_dir = path if is_dir else path.parent
    probe = target_dir
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise err(f"node {node!r}: cannot write {str(path)!r}: {str(probe)!r} is a file, not a directory")
    try:
        target_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".lkmedia-", dir=target_dir)
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise err(f"node {node!r}: cannot write {str(path)!r}: {_reason(e)}") from None
    if not is_dir and path.is_dir():
        raise err(f"node {node!r}: cannot write {str(path)!r}: it is a directory")
