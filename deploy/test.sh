#!/usr/bin/env bash
# The full mailrepl test suite on a fresh Debian 12 machine (as root): install what is needed
# (Debian's Dovecot, PostgreSQL up, the project with its test extras), then run every test.
# Extra arguments go to pytest (e.g. `bash deploy/test.sh tests/unit`). Two workers (pytest-xdist),
# one test file per worker at a time: most tests wait on servers and gateways, not on the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/install-deps.sh
[[ ! -x .venv/bin/python ]] || export PATH="$PWD/.venv/bin:$PATH"
echo "test: python -m pytest -q -p no:cacheprovider -n 2 --dist loadfile ${*:-tests}"
set +e
python -m pytest -q -p no:cacheprovider -n 2 --dist loadfile "${@:-tests}"
rc=$?
set -e
# any non-zero status is a failure, including 5 (no tests collected)
if [[ $rc -ne 0 ]]; then
  printf 'test: FAILED: pytest exited with status %d\n' "$rc" >&2
fi
exit "$rc"
