#!/usr/bin/env bash
# Builds the same SSH host image as image/Dockerfile without any registry:
# debootstrap a minimal Debian with openssh-server and python3, then `docker import` it.
# The root file system tarball is cached, so a second build takes seconds.
#
#   image/build.sh [IMAGE]      (default cnd-fab-sshd:latest)
#
# Environment: CND_FAB_IMAGE_CACHE (default /var/cache/cnd-fab), DEBIAN_MIRROR.
set -euo pipefail
image="${1:-cnd-fab-sshd:latest}"
cache="${CND_FAB_IMAGE_CACHE:-/var/cache/cnd-fab}"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
tarball="$cache/sshd-rootfs-bookworm.tar"

if docker image inspect "$image" >/dev/null 2>&1; then
    echo "image $image is already there"
    exit 0
fi
mkdir -p "$cache"
if [ ! -s "$tarball" ]; then
    root="$(mktemp -d "$cache/rootfs.XXXXXX")"
    trap 'rm -rf "$root"' EXIT
    debootstrap --variant=minbase --include=openssh-server,python3 bookworm "$root" "$mirror"
    rm -f "$root"/etc/ssh/ssh_host_*
    mkdir -p "$root/run/sshd"
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
    tar -C "$root" -cf "$tarball.tmp" .
    mv "$tarball.tmp" "$tarball"
fi
docker import --change 'CMD ["/usr/sbin/sshd", "-D", "-e"]' "$tarball" "$image"
echo "built $image from $tarball"
