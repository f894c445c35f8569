#!/usr/bin/env bash
# Installs what lkmedia needs on a Debian bookworm machine (run as root), then the
# package itself in editable mode with its dev extras. Safe to run again: a no-op
# for the system packages when they are all present.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(
  ffmpeg
  gstreamer1.0-tools
  gstreamer1.0-plugins-base gstreamer1.0-plugins-good
  gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly
  gstreamer1.0-libav
  nginx libnginx-mod-rtmp
  redis-server
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done

if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}" >&2
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "setup: run as root (missing: ${missing[*]})" >&2; exit 1; }
    SUDO="sudo"
  fi
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

bash scripts/install_s3_server.sh
bash scripts/install_livekit.sh

PY=${PYTHON:-python3}
# Skip pip when this checkout is already installed (editable) for the same pyproject.toml.
stamp=.cache/setup.$(sha256sum pyproject.toml | cut -c1-16)
here=$(pwd -P)
if [ -f "$stamp" ] && "$PY" - "$here" <<'PYCHECK' 2>/dev/null; then exit 0; fi
import sys, lkmedia, pytest, pytest_asyncio, pytest_timeout, yaml, av
sys.exit(0 if lkmedia.__file__.startswith(sys.argv[1] + "/") else 1)
PYCHECK
"$PY" -m pip install -q --disable-pip-version-check --root-user-action=ignore -e '.[dev]'
mkdir -p .cache && rm -f .cache/setup.* && touch "$stamp"
