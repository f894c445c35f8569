# Shared by the install scripts (sourced, not run).

# Where Go-built servers are kept, outside any clone: ~/.cache/lkmedia/bin by default.
LKMEDIA_BIN="${LKMEDIA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/lkmedia}/bin"

apt_install() {  # apt_install <package>...: installs the Debian packages not yet installed
  local missing=() p SUDO=""
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "setup: installing ${missing[*]}" >&2
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "setup: run as root to install ${missing[*]}" >&2; exit 1; }
    SUDO="sudo"
  fi
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

need_go() {
  command -v go >/dev/null 2>&1 || { echo "setup: Go is needed to build $1 (https://go.dev/dl/)" >&2; exit 1; }
}
