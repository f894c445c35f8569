"""The ``lkmedia`` command: run a YAML graph, or the built-in A/V demo.

Exit codes: 0 the graph ended without any error (including a graceful stop on
SIGINT/SIGTERM or --stop-after: outputs are finalised); 1 a node failed while media
flowed; 2 bad input (arguments, YAML, node arguments, links, unreadable input,
unwritable output, a node that cannot start); 130 a second signal cancelled the run
(fragmented outputs stay playable). Expected errors print one ``lkmedia: error: ...``
line; tracebacks only with --debug.
"""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import os
import re
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn, TextIO

from . import __version__
from .core import Graph, GraphError, LkmediaError, NodeError, Source
from .graphspec import GraphSpecError, LoadedGraph, graph_from_yaml, load_graph
from .logs import setup_logging
from .redact import redact_text as redact

log = logging.getLogger("lkmedia.cli")

EXIT_OK, EXIT_RUNTIME, EXIT_BAD_INPUT, EXIT_CANCELLED = 0, 1, 2, 130


class UsageError(Exception):
    """Bad command-line input (exit 2)."""


# -- running a graph ------------------------------------------------------------
@dataclass
class Outcome:
    code: int
    errors: list[NodeError] = field(default_factory=list)
    interrupted: str | None = None  # "stopped" | "cancelled"
    elapsed: float = 0.0


class Progress:
    """One refreshing status line on a TTY: elapsed, fps, output bitrate, bytes per sink."""

    def __init__(self, graph: Graph, stream: TextIO) -> None:
        self.graph = graph
        self.stream = stream
        self.t0 = time.monotonic()
        self.last = (self.t0, self._frames(), self._bytes_total())

    def _frames(self) -> int:
        stats = [(n, n.stats()) for n in self.graph.nodes.values()]
        enc = [s.get("frames_out", 0) for _, s in stats if "frames_out" in s]
        if enc:
            return max(enc)
        return max([s.get("frames", 0) for n, s in stats if isinstance(n, Source)] or [0])

    def _sink_bytes(self) -> dict[str, int]:
        return {s.name: int(s.stats().get("bytes", 0) or 0) for s in self.graph.sinks()}

    def _bytes_total(self) -> int:
        return sum(self._sink_bytes().values())

    def line(self) -> str:
        now, frames, total = time.monotonic(), self._frames(), self._bytes_total()
        t, f0, b0 = self.last
        dt = max(now - t, 1e-6)
        self.last = (now, frames, total)
        el = int(now - self.t0)
        parts = [f"{el // 3600:02d}:{el // 60 % 60:02d}:{el % 60:02d}",
                 f"{(frames - f0) / dt:5.1f} fps", f"{(total - b0) * 8 / dt / 1e6:6.2f} Mb/s"]
        parts += [f"{k} {human_size(v)}" for k, v in self._sink_bytes().items()]
        return "  ".join(parts)

    def draw(self) -> None:
        width = max(20, _term_width() - 1)
        self.stream.write("\r" + self.line()[:width].ljust(width))
        self.stream.flush()

    def clear(self) -> None:
        self.stream.write("\r" + " " * max(20, _term_width() - 1) + "\r")
        self.stream.flush()


def _term_width() -> int:
    try:
        cols = os.get_terminal_size(sys.stderr.fileno()).columns
    except OSError:
        cols = 0
    return cols if cols >= 40 else 100


def human_size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


class _Signals:
    """SIGINT/SIGTERM while a graph runs: the first stops it, the second cancels it."""

    def __init__(self, graph: Graph) -> None:
        self.graph, self.count, self.started = graph, 0, False
        self.loop = asyncio.get_running_loop()
        self.stopping: asyncio.Task[Any] | None = None
        self.cancelling: asyncio.Task[Any] | None = None
        self.installed: list[signal.Signals] = []

    def stop(self, reason: str) -> None:
        if self.stopping is None and self.started:
            log.info("stopping: %s", reason)
            self.stopping = self.loop.create_task(self.graph.stop())

    def on_signal(self, signame: str) -> None:
        self.count += 1
        if self.count == 1:
            log.warning("%s: stopping gracefully (send it again to cancel)", signame)
            self.stop(signame)
        elif self.cancelling is None:
            log.warning("%s again: cancelling", signame)
            self.cancelling = self.loop.create_task(self.graph.cancel())

    def __enter__(self) -> _Signals:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self.loop.add_signal_handler(sig, self.on_signal, sig.name)
                self.installed.append(sig)
            except (NotImplementedError, RuntimeError):  # not the main thread
                pass
        return self

    def __exit__(self, *exc: object) -> None:
        for sig in self.installed:
            self.loop.remove_signal_handler(sig)

    async def settle(self) -> None:
        for task in (self.stopping, self.cancelling):
            if task is not None:
                try:
                    await task
                except (GraphError, asyncio.CancelledError):
                    pass


async def execute(graph: Graph, stop_after: float | None = None, progress: bool = False) -> Outcome:
    """Start ``graph`` and wait for it; signals stop it (first) or cancel it (second)."""
    loop = asyncio.get_running_loop()
    t0 = time.monotonic()
    bar = Progress(graph, sys.stderr)
    ticker: asyncio.Task[None] | None = None
    with _Signals(graph) as sigs:
        try:
            try:
                await graph.start()
            except NodeError as e:
                return Outcome(EXIT_BAD_INPUT, [e], elapsed=time.monotonic() - t0)
            sigs.started = True
            if sigs.count:
                sigs.stop("signal during start")
            if stop_after is not None:
                loop.call_later(stop_after, sigs.stop, f"--stop-after {stop_after:g} s")
            ticker = loop.create_task(_tick(bar, progress))
            try:
                await graph.wait()
            except GraphError:
                pass
            await sigs.settle()
        finally:
            if ticker is not None:
                ticker.cancel()
                await asyncio.gather(ticker, return_exceptions=True)
                if progress:
                    bar.clear()
    errors = list(graph.errors)
    out = Outcome(EXIT_OK, errors, elapsed=time.monotonic() - t0)
    if sigs.cancelling is not None:
        out.code, out.interrupted = EXIT_CANCELLED, "cancelled"
    elif errors:
        out.code = EXIT_RUNTIME
    if sigs.count and out.interrupted is None:
        out.interrupted = "stopped"
    return out


async def _tick(bar: Progress, tty: bool) -> None:
    """Refresh the TTY line twice a second; without a TTY, log progress every 10 s."""
    n = 0
    while True:
        await asyncio.sleep(0.5 if tty else 10)
        n += 1
        if tty:
            bar.draw()
        else:
            log.info("progress %s", bar.line())


# -- summary --------------------------------------------------------------------
def sink_summary(graph: Graph) -> list[dict[str, Any]]:
    rows = []
    for s in graph.sinks():
        r = dataclasses.asdict(s.result) if s.result is not None else {}
        stats = s.stats()
        row: dict[str, Any] = {"sink": s.name, "type": type(s).__name__}
        row["location"] = r.get("location") or r.get("playlist") or r.get("playlist_location") \
            or r.get("directory") or r.get("url") or stats.get("location")
        row["duration"] = r.get("duration", stats.get("duration"))
        row["size"] = r.get("size", stats.get("bytes"))
        for k in ("segments", "images", "playlist", "live_playlist"):
            if k in r and k not in row:
                row[k] = r[k]
        row["status"] = "failed" if s.failed is not None else "ok"
        rows.append({k: (redact(v) if isinstance(v, str) else v) for k, v in row.items() if v is not None})
    return rows


def print_summary(graph: Graph, out: Outcome, as_json: bool) -> None:
    rows = sink_summary(graph)
    errors = [redact(str(e)) for e in out.errors]
    if as_json:
        print(json.dumps({"exit_code": out.code, "elapsed": round(out.elapsed, 3),
                          "interrupted": out.interrupted, "sinks": rows, "errors": errors}))
        return
    note = f" ({out.interrupted})" if out.interrupted else ""
    print(f"finished in {out.elapsed:.1f} s{note}")
    for r in rows:
        dur = f"{r['duration']:.2f} s" if isinstance(r.get("duration"), (int, float)) else "-"
        size = human_size(r["size"]) if isinstance(r.get("size"), (int, float)) else "-"
        print(f"  {r['sink']}: {r.get('location', '-')}  {dur}  {size}  {r['status']}")
    for e in errors:
        print(f"  error: {e}")


# -- commands -------------------------------------------------------------------
def parse_vars(pairs: Sequence[str]) -> dict[str, str]:
    out = {}
    for p in pairs:
        k, sep, v = p.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", k):
            raise UsageError(f"--var takes NAME=VALUE, got {p!r}")
        out[k] = v
    return out


def run_loaded(loaded: LoadedGraph, args: argparse.Namespace, stop_after: float | None) -> int:
    progress = sys.stderr.isatty() and not args.json_log
    out = asyncio.run(execute(loaded.graph, stop_after, progress))
    if out.code == EXIT_BAD_INPUT:
        fail(str(out.errors[0]), EXIT_BAD_INPUT)
    print_summary(loaded.graph, out, args.json_log)
    if out.code == EXIT_RUNTIME:
        print(f"lkmedia: error: {redact(str(out.errors[0]))}", file=sys.stderr)
    return out.code


def cmd_run(args: argparse.Namespace) -> int:
    if args.stop_after is not None and args.stop_after <= 0:
        raise UsageError("--stop-after must be a positive number of seconds")
    loaded = load_graph(args.graph, parse_vars(args.var), args.out)
    return run_loaded(loaded, args, args.stop_after)


DEMO_YAML = """\
# The built-in demo: a synthetic A/V source (flash + beep each second), one H.264 + AAC
# encode, written as MP4 and as HLS.
nodes:
  src: {type: synthetic, width: ${WIDTH}, height: ${HEIGHT}, fps: 30, duration: ${SECONDS}, live: ${LIVE}}
  venc: {type: video_encoder, codec: libx264, width: ${WIDTH}, height: ${HEIGHT}, fps: 30,
         bitrate: ${BITRATE}, keyframe_interval: 2}
  aenc: {type: audio_encoder, codec: aac, bitrate: 128000}
  mp4: {type: file, path: demo.mp4}
  hls: {type: hls, directory: hls, segment_duration: 2}
links:
  - [src.video, venc, mp4]
  - [src.audio, aenc, mp4]
  - [venc, hls]
  - [aenc, hls]
"""


def cmd_demo(args: argparse.Namespace) -> int:
    if args.seconds <= 0:
        raise UsageError("--seconds must be positive")
    m = re.fullmatch(r"(\d+)x(\d+)", args.size)
    if not m:
        raise UsageError(f"--size takes WIDTHxHEIGHT, got {args.size!r}")
    w, h = int(m.group(1)), int(m.group(2))
    bitrate = max(300_000, min(3_000_000, w * h * 30 // 10))
    variables = {"WIDTH": str(w), "HEIGHT": str(h), "SECONDS": str(args.seconds),
                 "LIVE": "true" if args.live else "false", "BITRATE": str(bitrate)}
    out_dir = Path(args.out)
    loaded = graph_from_yaml(DEMO_YAML, base_dir=out_dir, variables=variables, out_dir=out_dir, env={},
                             source="demo")
    code = run_loaded(loaded, args, None)
    if code in (EXIT_OK, EXIT_CANCELLED) and not args.json_log:
        print_outputs(loaded)
    return code


def print_outputs(loaded: LoadedGraph) -> None:
    """Where the demo's files are, with durations measured by probing them."""
    from .probe import probe

    for sink in loaded.graph.sinks():
        r = sink.result
        target = getattr(r, "location", None) or getattr(r, "playlist_location", None)
        if not target:
            for p in loaded.outputs.get(sink.name, []):
                cands = sorted(p.glob("*.m3u8")) if p.is_dir() else [p]
                if cands:
                    target = str(cands[0])
        if not target:
            continue
        try:
            pr = probe(str(target), count_frames=False)
            streams = ", ".join(f"{s.kind} {s.codec}" for s in pr.streams)
            print(f"{sink.name}: {target}  duration {pr.duration or 0:.2f} s  ({streams})")
        except (AssertionError, OSError) as e:
            print(f"{sink.name}: {target}  (could not probe: {str(e).splitlines()[0]})")


# -- parser ---------------------------------------------------------------------
class Parser(argparse.ArgumentParser):
    """argparse that reports errors as one ``lkmedia: error:`` line, exit 2."""

    def error(self, message: str) -> NoReturn:
        fail(f"{message} (see {self.prog} --help)", EXIT_BAD_INPUT)


def build_parser() -> argparse.ArgumentParser:
    common = Parser(add_help=False)
    common.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"],
                        help="log verbosity (default: warning)")
    common.add_argument("--json-log", action="store_true",
                        help="log JSON lines (level, ts, logger, msg) and print the summary as JSON")
    common.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")

    p = Parser(prog="lkmedia", description="LiveKit egress and ingress as a composable media graph.")
    p.add_argument("--version", action="version", version=f"lkmedia {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True

    run = sub.add_parser("run", parents=[common], help="run a graph described in YAML",
                         description="Run a graph described in YAML (see README: 'Graphs in YAML').")
    run.add_argument("graph", help="the graph's YAML file")
    run.add_argument("--var", action="append", default=[], metavar="NAME=VALUE",
                     help="set ${NAME} in the YAML (repeatable; wins over the environment)")
    run.add_argument("--out", metavar="DIR", help="directory for relative output paths (default: the YAML's)")
    run.add_argument("--stop-after", type=float, metavar="SECONDS",
                     help="stop gracefully after this long (live sources run until stopped)")
    run.set_defaults(func=cmd_run)

    demo = sub.add_parser("demo", parents=[common], help="synthetic A/V -> H.264/AAC -> MP4 + HLS",
                          description="Encode a synthetic flash/beep A/V source once, write MP4 and HLS.")
    demo.add_argument("--out", default="./out", metavar="DIR", help="output directory (default: ./out)")
    demo.add_argument("--seconds", type=float, default=10.0, help="length of the media (default: 10)")
    demo.add_argument("--size", default="1280x720", metavar="WxH", help="video size (default: 1280x720)")
    demo.add_argument("--live", action="store_true", help="pace the source in real time")
    demo.set_defaults(func=cmd_demo)
    egress = sub.add_parser("egress", parents=[common], help="the egress service livekit-server drives over Redis",
                            description="Serve LiveKit egress requests from livekit-server over Redis, with the "
                                        "Go egress's config (--config, EGRESS_CONFIG_FILE or EGRESS_CONFIG_BODY).")
    egress.add_argument("--config", metavar="FILE", help="egress config YAML (Go egress keys)")
    egress.add_argument("--config-body", metavar="YAML", help="egress config as YAML text")
    egress.add_argument("--dev", action="store_true",
                        help="no config: the local dev stack (devkey/secret, ws://127.0.0.1:7880, redis :6379)")
    egress.set_defaults(func=cmd_egress)
    disp = sub.add_parser("dispatcher", parents=[common],
                          help="queue egress requests while no worker has room (no media; lets a fleet "
                               "scale from zero)",
                          description="Claim StartEgress requests no egress worker can take, keep them in the "
                                      "Redis start queue for the first worker with room, fail those queued "
                                      "longer than queue.max_wait. Same config as `lkmedia egress`.")
    disp.add_argument("--config", metavar="FILE", help="egress config YAML (Go egress keys)")
    disp.add_argument("--config-body", metavar="YAML", help="egress config as YAML text")
    disp.add_argument("--dev", action="store_true", help=argparse.SUPPRESS)
    disp.set_defaults(func=cmd_dispatcher)
    edemo = sub.add_parser("egress-demo", parents=[common],
                           help="local dev stack: record a participant egress through the real API",
                           description="Start Redis, livekit-server, the lkmedia egress service and a synthetic "
                                       "publisher; record a participant egress through livekit-server's API into "
                                       "--out; print the final EgressInfo.")
    edemo.add_argument("--out", default="./out", metavar="DIR", help="output directory (default: ./out)")
    edemo.add_argument("--seconds", type=float, default=10.0, help="recording length (default: 10)")
    edemo.set_defaults(func=cmd_egress_demo)
    idemo = sub.add_parser("ingress-demo", parents=[common],
                           help="local dev stack: push RTMP into an ingress made through the real API",
                           description="Start Redis, livekit-server and `lkmedia ingress`; create an RTMP ingress "
                                       "through livekit-server's API; push synthetic A/V with the ffmpeg CLI; show "
                                       "the participant and its tracks as a subscriber sees them; print the final "
                                       "IngressInfo (stream key redacted).")
    idemo.add_argument("--seconds", type=float, default=10.0, help="push length (default: 10)")
    idemo.set_defaults(func=cmd_ingress_demo)
    ingress = sub.add_parser("ingress", parents=[common], help="the ingress service livekit-server drives over Redis",
                             description="Serve LiveKit ingress (RTMP, WHIP, URL) with the Go ingress's config "
                                         "(--config, INGRESS_CONFIG_FILE or INGRESS_CONFIG_BODY).")
    ingress.add_argument("--config", metavar="FILE", help="ingress config YAML (Go ingress keys)")
    ingress.add_argument("--config-body", metavar="YAML", help="ingress config as YAML text")
    ingress.add_argument("--check", action="store_true", help="load and check the config, print it redacted, exit")
    ingress.set_defaults(func=cmd_ingress)
    # bench subcommands are added here as that package lands.
    return p


def cmd_ingress(args: argparse.Namespace) -> int:
    from .service.config_yaml import ConfigError
    from .service.ingress_config import load_ingress_config

    try:
        conf = load_ingress_config(args.config, args.config_body)
    except (ConfigError, OSError) as e:
        raise UsageError(f"ingress config: {e}") from None
    if args.log_level == "warning" and not args.debug:
        logging.getLogger().setLevel(conf.logging.level.upper() if conf.logging.level else "INFO")
    shown = json.dumps(conf.redacted(), default=str)
    log.info("ingress config: %s", shown)
    if args.check:
        print(shown)
        return EXIT_OK
    from .service.ingress_node import IngressNode

    try:
        node = IngressNode(conf)
    except ValueError as e:
        raise UsageError(f"ingress config: {e}") from None
    asyncio.run(node.run())
    return EXIT_OK


def cmd_egress_demo(args: argparse.Namespace) -> int:
    from .demo import run
    from .dev.stack import StackError

    if args.log_level == "warning" and not args.debug:
        logging.getLogger().setLevel("ERROR")
    try:
        return run(args.out, args.seconds)
    except StackError as e:
        raise UsageError(f"{e} (./scripts/setup.sh installs livekit-server and redis-server)") from None


def cmd_ingress_demo(args: argparse.Namespace) -> int:
    from .dev.ingress_demo import run
    from .dev.stack import StackError

    if args.seconds <= 0:
        raise UsageError("--seconds must be positive")
    if args.log_level == "warning" and not args.debug:
        logging.getLogger().setLevel("ERROR")
    try:
        return run(args.seconds)
    except StackError as e:
        raise UsageError(f"{e} (./scripts/setup.sh installs livekit-server and redis-server)") from None


def cmd_egress(args: argparse.Namespace) -> int:
    from .service.config import ConfigError, embedded_default, load_config
    from .service.egress import EgressService

    try:
        conf = embedded_default() if args.dev else load_config(args.config, args.config_body)
    except (ConfigError, OSError) as e:
        raise UsageError(f"egress config: {e}") from None
    if args.log_level == "warning" and not args.debug:
        logging.getLogger().setLevel(conf.logging.level.upper() if conf.logging.level else "INFO")
    log.info("egress config: %s", json.dumps(conf.redacted(), default=str))
    asyncio.run(EgressService(conf, dispatcher=args.func is cmd_dispatcher).run())
    return EXIT_OK


def cmd_dispatcher(args: argparse.Namespace) -> int:
    return cmd_egress(args)


def fail(message: str, code: int) -> NoReturn:
    print(f"lkmedia: error: {redact(message)}", file=sys.stderr)
    raise SystemExit(code)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.log_level, args.json_log, args.debug)
    try:
        return int(args.func(args))
    except SystemExit:
        raise
    except (UsageError, GraphSpecError) as e:
        if args.debug:
            log.exception("bad input")
        fail(str(e), EXIT_BAD_INPUT)
    except (LkmediaError, OSError, ValueError) as e:
        if args.debug:
            log.exception("failed")
        fail(str(e), EXIT_RUNTIME)
    except KeyboardInterrupt:
        fail("interrupted", EXIT_CANCELLED)


if __name__ == "__main__":
    raise SystemExit(main())
