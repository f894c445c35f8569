#!/usr/bin/env bash
# Installs the real LiveKit parts the integration tests and the demo drive:
# livekit-server and the lk CLI (built with `go install` into <repo>/.cache/bin, pinned
# versions) and redis-server (Debian package; never started as a system service here,
# lkmedia.testing.devstack starts its own instances). Safe to run again: a fast no-op
# when both binaries report the pinned versions and redis-server is present.
set -euo pipefail
cd "$(dirname "$0")/.."

SERVER_VERSION=1.13.5
LK_VERSION=2.18.2
BIN="$(pwd -P)/.cache/bin"

has_version() {  # has_version <binary> <version>
  [ -x "$1" ] && "$1" --version 2>/dev/null | grep -q -- "version $2\b"
}

apt_install() {  # apt_install <package>...: the Debian packages not yet installed
  local missing=() p SUDO=""
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "install_livekit: installing ${missing[*]}" >&2
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "install_livekit: run as root to install ${missing[*]}" >&2; exit 1; }
    SUDO="sudo"
  fi
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

command -v redis-server >/dev/null 2>&1 || apt_install redis-server

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
has_version "$BIN/server" "$SERVER_VERSION" || need_server=1
has_version "$BIN/lk" "$LK_VERSION" || need_lk=1
[ $need_server -eq 0 ] && [ $need_lk -eq 0 ] && exit 0

command -v go >/dev/null 2>&1 || { echo "install_livekit: Go is needed to build livekit-server and lk (https://go.dev/dl/)" >&2; exit 1; }
mkdir -p "$BIN"
if [ $need_server -eq 1 ]; then
  echo "install_livekit: go install livekit-server v$SERVER_VERSION (a few minutes the first time)" >&2
  GOBIN="$BIN" go install "github.com/livekit/livekit-server/cmd/server@v$SERVER_VERSION"
fi
if [ $need_lk -eq 1 ]; then
  echo "install_livekit: go install lk v$LK_VERSION (a few minutes the first time)" >&2
  GOBIN="$BIN" go install "github.com/livekit/livekit-cli/v2/cmd/lk@v$LK_VERSION" || build_lk_from_source
fi
has_version "$BIN/server" "$SERVER_VERSION" || { echo "install_livekit: $BIN/server is not v$SERVER_VERSION" >&2; exit 1; }
has_version "$BIN/lk" "$LK_VERSION" || { echo "install_livekit: $BIN/lk is not v$LK_VERSION" >&2; exit 1; }
