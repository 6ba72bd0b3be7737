#!/usr/bin/env bash
# Starts a private Docker engine in the background (for tests and CI), unless the socket
# already answers. Prints the DOCKER_HOST to use.
#
# Environment: CND_FAB_DOCKER_ROOT (default /var/lib/cnd-fab-docker).
set -euo pipefail
root="${CND_FAB_DOCKER_ROOT:-/var/lib/cnd-fab-docker}"
socket="$root/docker.sock"
export DOCKER_HOST="unix://$socket"
if docker version >/dev/null 2>&1; then
    echo "$DOCKER_HOST"
    exit 0
fi
mkdir -p "$root/data" "$root/exec"
# No bridge and no iptables: every test container uses host networking on loopback.
nohup dockerd \
    --data-root "$root/data" \
    --exec-root "$root/exec" \
    --pidfile "$root/dockerd.pid" \
    -H "unix://$socket" \
    --bridge none --iptables=false --ip6tables=false \
    >"$root/dockerd.log" 2>&1 &
for _ in $(seq 1 120); do
    if docker version >/dev/null 2>&1; then
        echo "$DOCKER_HOST"
        exit 0
    fi
    sleep 0.5
done
echo "dockerd did not answer on $socket; its log:" >&2
tail -n 30 "$root/dockerd.log" >&2
exit 1
