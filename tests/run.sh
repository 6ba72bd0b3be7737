#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs what it needs (Docker, sshd, debootstrap,
# qemu-user for the aarch64 kernel, the Python packages), starts a private Docker engine,
# builds the SSH host image without a registry, then type-checks and runs every test, the
# Docker end-to-end tests included.
# This is the command the README gives and .ci/run calls.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v dockerd >/dev/null || ! command -v debootstrap >/dev/null || ! command -v sshd >/dev/null \
    || ! command -v qemu-aarch64 >/dev/null || ! command -v gcc >/dev/null; then
    if [ "$(id -u)" != 0 ]; then
        echo "tests/run.sh: needs root to install docker.io, openssh-server, debootstrap and qemu-user" >&2
        exit 1
    fi
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q docker.io openssh-server debootstrap qemu-user gcc >/dev/null
fi

python3 -m venv .venv
.venv/bin/pip install --quiet --upgrade pip
.venv/bin/pip install --quiet -e '.[test]'

DOCKER_HOST="$(bash tests/testbed/start-dockerd.sh | tail -n 1)"
export DOCKER_HOST
bash image/build.sh cnd-fab-sshd:latest

# Native kernels for x86_64 and aarch64, built once into the clone (about a minute cold).
export CND_FAB_CACHE_DIR="$PWD/.cache/cnd-fab"

.venv/bin/mypy
.venv/bin/pytest -p no:cacheprovider "$@"
