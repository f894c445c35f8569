#!/usr/bin/env bash
# Installs livekit-client (its self-contained UMD build, which lkmedia's template page
# loads with no bundler) from the npm registry into $LKMEDIA_CACHE/npm
# (~/.cache/lkmedia/npm), outside the clone. A no-op when the pinned version is there.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

LIVEKIT_CLIENT_VERSION=2.23.0  # lkmedia/template/__init__.py says the same
DIR="$(dirname "$LKMEDIA_BIN")/npm"
stamp=$DIR/.livekit-client-$LIVEKIT_CLIENT_VERSION

if [ -f "$stamp" ] && [ -f "$DIR/node_modules/livekit-client/dist/livekit-client.umd.js" ]; then exit 0; fi
command -v npm >/dev/null 2>&1 || { echo "setup: npm is needed for livekit-client (Node.js 18+)" >&2; exit 1; }
mkdir -p "$DIR"
echo "install_template_deps: npm install livekit-client@$LIVEKIT_CLIENT_VERSION" >&2
npm install --prefix "$DIR" --no-audit --no-fund --silent "livekit-client@$LIVEKIT_CLIENT_VERSION"
rm -f "$DIR"/.livekit-client-* && touch "$stamp"
