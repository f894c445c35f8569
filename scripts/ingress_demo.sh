#!/usr/bin/env bash
# The ingress main job: a local dev stack (Redis, livekit-server and `lkmedia ingress`), an
# RTMP ingress created through livekit-server's API, 10 s of synthetic flash/beep A/V pushed
# with the ffmpeg CLI; shows the participant and its tracks as a subscriber sees them and
# prints the final IngressInfo (stream key redacted). Arguments go to `lkmedia ingress-demo`
# (--seconds N).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/lib.sh
apt_install ffmpeg
PY=${PYTHON:-python3}
exec "$PY" -m lkmedia ingress-demo "$@"
