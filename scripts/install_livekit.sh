#!/usr/bin/env bash
# Builds the real LiveKit parts with `go install` into $LKMEDIA_BIN (scripts/lib.sh:
# ~/.cache/lkmedia/bin), pinned versions: `server` (livekit-server, which the demo needs)
# and/or `lk` (the CLI the tests drive). No arguments: both. Safe to run again: a fast
# no-op when each binary reports its pinned version.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

SERVER_VERSION=1.13.5
LK_VERSION=2.18.2
BIN="$LKMEDIA_BIN"
want=("$@"); [ ${#want[@]} -eq 0 ] && want=(server lk)

has_version() {  # has_version <binary> <version>
  [ -x "$1" ] && "$1" --version 2>/dev/null | grep -q -- "version $2\b"
}

module_dir() {  # module_dir <module@version>: its source in the module cache
  go mod download -json "$1" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p'
}

# lk v2.18.2 pins a livekit/protocol pseudo-version that the Go module proxy does not
# serve (and `go install` also asks the proxy for a version list it may refuse). Then
# build lk from its module source with that one dependency set to the protocol version
# livekit-server v1.13.5 uses (newer, same API), and the system PortAudio (the module
# zip lacks the PortAudio sources lk's console would compile).
build_lk_from_source() {
  local cli srv pinned served tmp
  cli=$(module_dir "github.com/livekit/livekit-cli/v2@v$LK_VERSION")
  srv=$(module_dir "github.com/livekit/livekit-server@v$SERVER_VERSION")
  pinned=$(awk '$1 == "github.com/livekit/protocol" {print $2; exit}' "$cli/go.mod")
  served=$(awk '$1 == "github.com/livekit/protocol" {print $2; exit}' "$srv/go.mod")
  apt_install pkg-config portaudio19-dev
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' RETURN
  cp -r "$cli/." "$tmp/" && chmod -R u+w "$tmp"
  echo "install_livekit: building lk with github.com/livekit/protocol $served (pinned $pinned is not on the proxy)" >&2
  (cd "$tmp" && go mod edit -replace "github.com/livekit/protocol@$pinned=github.com/livekit/protocol@$served" \
     && go build -mod=mod -trimpath -tags portaudio_system -o "$BIN/lk" ./cmd/lk)
}

need_server=0; need_lk=0
for w in "${want[@]}"; do
  case $w in
    server) has_version "$BIN/server" "$SERVER_VERSION" || need_server=1 ;;
    lk) has_version "$BIN/lk" "$LK_VERSION" || need_lk=1 ;;
    *) echo "install_livekit: unknown part $w (server, lk)" >&2; exit 2 ;;
  esac
done
[ $need_server -eq 0 ] && [ $need_lk -eq 0 ] && exit 0

need_go "livekit-server and lk"
mkdir -p "$BIN"
if [ $need_server -eq 1 ]; then
  echo "install_livekit: go install livekit-server v$SERVER_VERSION (a few minutes the first time)" >&2
  GOBIN="$BIN" go install "github.com/livekit/livekit-server/cmd/server@v$SERVER_VERSION"
fi
if [ $need_lk -eq 1 ]; then
  echo "install_livekit: go install lk v$LK_VERSION (a few minutes the first time)" >&2
  GOBIN="$BIN" go install "github.com/livekit/livekit-cli/v2/cmd/lk@v$LK_VERSION" || build_lk_from_source
fi
if [ $need_server -eq 1 ]; then
  has_version "$BIN/server" "$SERVER_VERSION" || { echo "install_livekit: $BIN/server is not v$SERVER_VERSION" >&2; exit 1; }
fi
if [ $need_lk -eq 1 ]; then
  has_version "$BIN/lk" "$LK_VERSION" || { echo "install_livekit: $BIN/lk is not v$LK_VERSION" >&2; exit 1; }
fi
