#!/usr/bin/env bash
# Regenerates lkmedia/rpc/protos/*_pb2.py(i) from the .proto files beside them.
# A dev step only: the generated modules are committed, so installing lkmedia needs
# nothing but PyPI. Needs grpcio-tools (the `dev` extra). Run from anywhere.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
"$PY" -c "import grpc_tools" 2>/dev/null || {
  echo "gen_protos: grpcio-tools is missing: pip install -e '.[dev]'" >&2
  exit 1
}
# -I . keeps the descriptor file names unique (lkmedia/rpc/protos/<name>.proto), so they
# never clash with livekit-protocol's files in the default descriptor pool.
"$PY" -m grpc_tools.protoc -I . --python_out=. --pyi_out=. lkmedia/rpc/protos/*.proto
echo "gen_protos: generated $(ls lkmedia/rpc/protos/*_pb2.py | wc -l) modules" >&2
