"""An RTSP server nobody here wrote: GStreamer's gst-rtsp-server (Debian's
gir1.2-gst-rtsp-server-1.0, through the system Python's gi), serving a finite live test
stream for RTSP pull: H.264 (x264enc tune=zerolatency, a key frame every second) and AAC
(avenc_aac), both paced in real time, SECONDS long, then end of stream (the server's
RTP sessions send RTCP BYE).

    /usr/bin/python3 lkmedia/dev/rtsp_server.py SECONDS [WIDTHxHEIGHT] [--tls CERT KEY]

Run it with the system Python (``/usr/bin/python3``: the one with ``gi``); it imports
nothing from lkmedia. It binds a free loopback port and prints its URL
(``rtsp://127.0.0.1:PORT/test``) on one line once it listens, then serves until killed.
With ``--tls`` (PEM files) it serves RTSPS instead: TLS on the control connection, which
carries the media too with TCP-interleaved transport (``rtsps://127.0.0.1:PORT/test``).
Each client gets its own stream from the start (the media is not shared).
"""
from __future__ import annotations

import importlib
import sys
from typing import Any

# Imported by name: gi exists for the system Python only (mypy, run by the project's, has
# neither the module nor stubs for it).
gi: Any = importlib.import_module("gi")
gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
GLib, Gio, Gst, GstRtspServer = (importlib.import_module(f"gi.repository.{m}")
                                 for m in ("GLib", "Gio", "Gst", "GstRtspServer"))

FPS = 30
AUDIO_RATE = 48_000
AUDIO_BUFFER = 480  # samples: 10 ms per buffer


def launch(seconds: float, width: int, height: int) -> str:
    """The media's pipeline, payloaders named pay0, pay1 (gst-rtsp-server's convention)."""
    frames = round(seconds * FPS)
    buffers = round(seconds * AUDIO_RATE / AUDIO_BUFFER)
    return (
        f"( videotestsrc is-live=true pattern=ball num-buffers={frames} "
        f"! video/x-raw,width={width},height={height},framerate={FPS}/1 "
        f"! videoconvert ! x264enc tune=zerolatency speed-preset=ultrafast bitrate=2000 key-int-max={FPS} "
        f"! video/x-h264,profile=constrained-baseline ! rtph264pay name=pay0 pt=96 config-interval=1 "
        f"audiotestsrc is-live=true wave=sine freq=440 samplesperbuffer={AUDIO_BUFFER} num-buffers={buffers} "
        f"! audio/x-raw,rate={AUDIO_RATE},channels=2 ! audioconvert ! avenc_aac bitrate=128000 "
        f"! rtpmp4gpay name=pay1 pt=97 )"
    )


def serve_tls(server: Any, factory: Any, cert: str, key: str) -> None:
    """RTSPS: the server's certificate, and every client let in as "anonymous" (a server with
    an auth object refuses media to clients without a role)."""
    auth = GstRtspServer.RTSPAuth()
    auth.set_tls_certificate(Gio.TlsCertificate.new_from_files(cert, key))
    token = GstRtspServer.RTSPToken()
    token.set_string(GstRtspServer.RTSP_TOKEN_MEDIA_FACTORY_ROLE, "anonymous")
    auth.set_default_token(token)
    server.set_auth(auth)
    factory.add_role_from_structure(Gst.Structure.from_string(
        "anonymous, media.factory.access=(boolean)true, media.factory.construct=(boolean)true")[0])


def main(argv: list[str]) -> int:
    tls: list[str] = []
    if "--tls" in argv:
        i = argv.index("--tls")
        tls, argv = argv[i + 1 : i + 3], argv[:i] + argv[i + 3 :]
    if not 2 <= len(argv) <= 3 or (tls and len(tls) != 2):
        print(__doc__, file=sys.stderr)
        return 2
    seconds = float(argv[1])
    width, height = (int(v) for v in (argv[2] if len(argv) == 3 else "1280x720").split("x"))
    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service("0")  # the OS picks a free port; get_bound_port() tells it
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(launch(seconds, width, height))
    factory.set_shared(False)
    if tls:
        serve_tls(server, factory, *tls)
    server.get_mount_points().add_factory("/test", factory)
    if server.attach(None) == 0:
        print("cannot attach the RTSP server", file=sys.stderr)
        return 1
    print(f"{'rtsps' if tls else 'rtsp'}://127.0.0.1:{server.get_bound_port()}/test", flush=True)
    try:
        GLib.MainLoop().run()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
