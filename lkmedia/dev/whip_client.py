"""A WHIP publisher nobody here wrote: FFmpeg's own WHIP muxer (FFmpeg 8, through PyAV),
pushing the synthetic flash/beep A/V as H.264 (baseline, no B-frames) and Opus in real
time, then closing (which DELETEs its WHIP resource).

    python3 -m lkmedia.dev.whip_client URL SECONDS [WIDTHxHEIGHT]

The bearer token, if any, comes in the environment (LKM_WHIP_TOKEN), never in argv.
LKM_WHIP_P256=1 gives FFmpeg's DTLS a P-256 certificate (p256_certificate says why).
LKM_WHIP_SENT=PATH writes the SHA-1 of each Opus packet sent to PATH, a line each (what a
test compares a recording's packets with). LKM_WHIP_AUDIO_ONLY=1 sends the Opus alone.
Exit status 0 when it sent everything; the error otherwise.
"""
from __future__ import annotations

import hashlib
import os
import sys
import tempfile
import time
from fractions import Fraction

import av
import av.logging

from ..sources.synthetic import SyntheticSource


def p256_certificate(directory: str) -> dict[str, str]:
    """A self-signed P-256 ECDSA certificate for FFmpeg's DTLS (its ``cert_file`` and
    ``key_file`` options). FFmpeg 8 built with GnuTLS (as PyAV's is) makes itself a P-224
    key when given none, which OpenSSL 3/4 peers (aiortc among them) refuse as a DTLS
    server certificate ("wrong curve"); Pion, livekit-server's stack, accepts it."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "whip-client")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30)).sign(key, hashes.SHA256()))
    paths = {"cert_file": os.path.join(directory, "dtls.crt"), "key_file": os.path.join(directory, "dtls.key")}
    with open(paths["cert_file"], "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(paths["key_file"], "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    return paths


class NothingSent(Exception):
    """push failed before a packet got through (worth trying again)."""


def push(url: str, seconds: float, width: int = 640, height: int = 360, token: str | None = None,
         certificate: dict[str, str] | None = None) -> int:
    import logging

    debug = bool(os.environ.get("LKM_WHIP_DEBUG"))
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING)
    av.logging.set_level(av.logging.DEBUG if debug else av.logging.WARNING)  # FFmpeg says why it failed
    gen = SyntheticSource(width=width, height=height, fps=30, sample_rate=48_000, channels=2,
                          audio_frame_samples=960)
    options = {**({"authorization": token} if token else {}), **(certificate or {})}
    try:
        out = av.open(url, "w", format="whip", options=options, timeout=10)
    except (av.FFmpegError, OSError) as e:
        raise NothingSent(str(e)) from e
    sent_path = os.environ.get("LKM_WHIP_SENT")
    sent = None
    muxed = False
    video = not os.environ.get("LKM_WHIP_AUDIO_ONLY")
    try:
        v = out.add_stream("libx264", rate=30, options={
            "preset": "veryfast", "tune": "zerolatency", "profile": "baseline", "bf": "0", "g": "30",
            "threads": "1"}) if video else None  # one slice a frame
        if v is not None:
            v.width, v.height, v.pix_fmt = width, height, "yuv420p"
        a = out.add_stream("libopus", rate=48_000, layout="stereo")
        sent = open(sent_path, "w") if sent_path else None  # noqa: SIM115 (closed below)

        def audio(packets: list[av.Packet]) -> None:
            nonlocal muxed
            if sent is not None:
                sent.writelines(hashlib.sha1(bytes(p)).hexdigest() + "\n" for p in packets)
            out.mux(packets)
            muxed = True

        t0 = time.monotonic()
        i = s = 0
        while (now := time.monotonic() - t0) < seconds:
            while v is not None and i / 30 <= now:
                f = gen.video_frame(i)
                f.pts, f.time_base = i, Fraction(1, 30)
                out.mux(v.encode(f))
                i += 1
            while s / 48_000 <= now:
                af = gen.audio_frame(s)
                af.pts, af.time_base = s, Fraction(1, 48_000)
                audio(a.encode(af))
                s += 960
            time.sleep(0.004 if v is not None else 0.01)
        if v is not None:
            out.mux(v.encode(None))
        audio(a.encode(None))
    except (av.FFmpegError, OSError) as e:
        if not muxed:
            raise NothingSent(str(e)) from e
        raise
    finally:
        out.close()
        if sent is not None:
            sent.close()
    return i if v is not None else s // 960


def main() -> int:
    if len(sys.argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    size = sys.argv[3] if len(sys.argv) > 3 else "640x360"
    w, h = (int(x) for x in size.split("x"))
    # FFmpeg's WHIP muxer reads only the first candidate of the answer and fails when it is
    # a TCP one, which livekit-server's own endpoint lists first now and then: that fails
    # before anything is sent, and is tried again (4 times at most; under load the failure
    # can take longer than the 3 s an earlier bound allowed).
    for attempt in range(5):
        try:
            with tempfile.TemporaryDirectory(prefix="whip-client-") as d:
                cert = p256_certificate(d) if os.environ.get("LKM_WHIP_P256") else None
                frames = push(sys.argv[1], float(sys.argv[2]), w, h, os.environ.get("LKM_WHIP_TOKEN"), cert)
            break
        except (NothingSent, av.FFmpegError, OSError) as e:
            if attempt < 4 and isinstance(e, NothingSent):
                print(f"whip_client: {e}: trying again", file=sys.stderr)
                continue
            print(f"whip_client: {e}", file=sys.stderr)
            return 1
    print(f"whip_client: sent {frames} frames", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
