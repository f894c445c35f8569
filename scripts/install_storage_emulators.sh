#!/usr/bin/env bash
# Installs the storage emulators the GCS and Azure upload tests start, outside the clone:
#   fake-gcs-server (Go, `go install`) into $LKMEDIA_BIN (~/.cache/lkmedia/bin), and
#   Azurite (npm) into $LKMEDIA_CACHE/azurite (~/.cache/lkmedia/azurite).
# Each is a no-op when its pinned version is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

FAKE_GCS_VERSION=v1.56.1
AZURITE_VERSION=3.37.0  # lkmedia/testing/azurite.py finds it there
BIN=$LKMEDIA_BIN
AZ=$(dirname "$LKMEDIA_BIN")/azurite

stamp=$BIN/.fake-gcs-server-$FAKE_GCS_VERSION
if ! { [ -x "$BIN/fake-gcs-server" ] && [ -f "$stamp" ]; }; then
  need_go fake-gcs-server
  mkdir -p "$BIN"
  echo "install_storage_emulators: building fake-gcs-server $FAKE_GCS_VERSION" >&2
  GOBIN=$BIN GOFLAGS=-buildvcs=false go install "github.com/fsouza/fake-gcs-server@$FAKE_GCS_VERSION"
  rm -f "$BIN"/.fake-gcs-server-* && touch "$stamp"
fi

stamp=$AZ/.azurite-$AZURITE_VERSION
if ! { [ -f "$stamp" ] && [ -x "$AZ/node_modules/.bin/azurite-blob" ]; }; then
  command -v npm >/dev/null 2>&1 || { echo "setup: npm is needed for Azurite (Node.js 18+)" >&2; exit 1; }
  mkdir -p "$AZ"
  echo "install_storage_emulators: npm install azurite@$AZURITE_VERSION" >&2
  npm install --prefix "$AZ" --no-audit --no-fund --silent "azurite@$AZURITE_VERSION"
  rm -f "$AZ"/.azurite-* && touch "$stamp"
fi
