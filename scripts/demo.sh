#!/usr/bin/env bash
# The main job: a local dev stack (Redis, livekit-server, the lkmedia egress service and a
# synthetic flash/beep publisher) records a 10 s participant egress through livekit-server's
# API into ./out and prints the final EgressInfo. Arguments go to `lkmedia egress-demo`
# (--out DIR, --seconds N). `lkmedia demo` is the graph-only demo (no LiveKit).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
PY=${PYTHON:-python3}
exec "$PY" -m lkmedia egress-demo "$@"
