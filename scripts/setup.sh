#!/usr/bin/env bash
# Installs what lkmedia needs on a Debian bookworm machine (run as root), then the package
# itself in editable mode. Safe to run again: a fast no-op when everything is present.
#
#   scripts/setup.sh          what the main job (the demo) needs: redis-server, livekit-server,
#                             `pip install -e .`
#   scripts/setup.sh --test   also what the tests need: the ffmpeg CLI, GStreamer (and its
#                             RTSP server, for the system Python), nginx-rtmp,
#                             Chromium, Xvfb, PulseAudio and fonts (the Chrome engine), lk,
#                             MinIO and fake-gcs-server, livekit-client and Azurite from npm,
#                             `pip install -e '.[dev]'` (with the gcp, azure and oss extras)
#
# Go-built servers go to $LKMEDIA_CACHE/bin (default ~/.cache/lkmedia/bin), outside the
# clone, each checked against its pinned version, so a fresh clone does not rebuild them.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

test_deps=0
[ "${1:-}" = "--test" ] && test_deps=1

apt_install redis-server
if [ $test_deps -eq 1 ]; then
  apt_install ffmpeg \
    gstreamer1.0-tools gstreamer1.0-plugins-base gstreamer1.0-plugins-good \
    gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly gstreamer1.0-libav \
    python3-gi gir1.2-gst-rtsp-server-1.0 \
    nginx libnginx-mod-rtmp \
    chromium xvfb pulseaudio pulseaudio-utils fonts-noto-core
fi

bash scripts/install_livekit.sh server
if [ $test_deps -eq 1 ]; then
  bash scripts/install_livekit.sh lk
  bash scripts/install_s3_server.sh
  bash scripts/install_storage_emulators.sh
  bash scripts/install_template_deps.sh
fi

PY=${PYTHON:-python3}
extra=""
[ $test_deps -eq 1 ] && extra="[dev]"
# Skip pip when this checkout is already installed (editable) for the same pyproject.toml
# (with the dev extras: that install serves the main job too).
base=.cache/setup.$(sha256sum pyproject.toml | cut -c1-16)
stamp=$base$([ $test_deps -eq 1 ] && echo .dev)
here=$(pwd -P)
if { [ -f "$stamp" ] || [ -f "$base.dev" ]; } && (cd / && "$PY" - "$here") <<'PYCHECK' 2>/dev/null; then exit 0; fi
import sys, lkmedia, yaml, av
sys.exit(0 if lkmedia.__file__.startswith(sys.argv[1] + "/") else 1)
PYCHECK
"$PY" -m pip install -q --disable-pip-version-check --root-user-action=ignore -e ".$extra"
mkdir -p .cache && rm -f .cache/setup.* && touch "$stamp"
