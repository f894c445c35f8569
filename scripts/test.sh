#!/usr/bin/env bash
# The whole test suite, integration tests included, after the static checks (ruff with a
# complexity limit, mypy: --strict on the engine and the worker core, the default level on
# the rest). Installs what the tests need first. Extra arguments go to pytest (and skip the
# static checks, for a quick run of a few tests).
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test || exit $?

PY=${PYTHON:-python3}
if [ $# -eq 0 ]; then
  "$PY" -m ruff check lkmedia tests bench || exit 1
  "$PY" -m mypy || exit 1
  "$PY" -m mypy --strict lkmedia/core lkmedia/worker || exit 1
fi
"$PY" -m pytest -q "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  # 5 is pytest's "no tests collected": it stays a failure, and says so.
  echo "test.sh: pytest collected no tests" >&2
fi
exit "$rc"
