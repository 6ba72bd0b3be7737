#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs what it needs (Docker, sshd, debootstrap,
# the Python packages), starts a private Docker engine, builds the SSH host image without a
# registry, then type-checks and runs every test, the Docker end-to-end tests included.
# This is the command the README gives and .ci/run calls.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v dockerd >/dev/null || ! command -v debootstrap >/dev/null || ! command -v sshd >/dev/null; then
    if [ "$(id -u)" != 0 ]; then
        echo "tests/run.sh: needs root to install docker.io, openssh-server and debootstrap" >&2
        exit 1
    fi
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q docker.io openssh-server debootstrap >/dev/null
fi

python3 -m venv .venv
.venv/bin/pip install --quiet --upgrade pip
.venv/bin/pip install --quiet -e '.[test]'

DOCKER_HOST="$(bash tests/testbed/start-dockerd.sh | tail -n 1)"
export DOCKER_HOST
bash image/build.sh cnd-fab-sshd:latest

.venv/bin/mypy
.venv/bin/pytest -p no:cacheprovider "$@"
