#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs what it needs, then type-checks and
# runs every test. This is the command the README gives and .ci/run calls.
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -m venv .venv
.venv/bin/pip install --quiet --upgrade pip
.venv/bin/pip install --quiet -e '.[test]'

.venv/bin/mypy
.venv/bin/pytest -p no:cacheprovider "$@"
