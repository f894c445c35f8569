#!/usr/bin/env bash
# The main job: synthetic A/V -> one H.264 + AAC encode -> MP4 + HLS in ./out.
# Arguments go to `lkmedia demo` (--out DIR, --seconds N, --size WxH, --live).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
PY=${PYTHON:-python3}
exec "$PY" -m lkmedia demo "$@"
