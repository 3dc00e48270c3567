#!/usr/bin/env bash
# The mailrepl demo on a fresh Debian 12 machine (as root): install what is needed, then run it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/install-deps.sh
[[ ! -x .venv/bin/python ]] || export PATH="$PWD/.venv/bin:$PATH"
exec python deploy/demo.py "$@"
