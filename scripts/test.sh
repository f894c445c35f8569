#!/usr/bin/env bash
# The whole test suite, integration tests included. Extra arguments go to pytest.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh || exit $?

PY=${PYTHON:-python3}
"$PY" -m pytest -q "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  # 5 is pytest's "no tests collected": it stays a failure, and says so.
  echo "test.sh: pytest collected no tests" >&2
fi
exit "$rc"
