#!/usr/bin/env bash
# Build (once) a Debian bookworm base image with python3 and python3-venv from Debian's packages,
# trusting this machine's local CA certificates so pip inside `docker build` reaches the package
# index through the machine's TLS-intercepting proxy. The certificates go into THIS base image
# only, never into the project's Dockerfile. Prints the image tag on stdout.
#
# Cached twice: the imported image (by a tag derived from the inputs) and the root file system
# tarball under $IMAGE_TEST_CACHE, so a warm run costs nothing and a fresh engine only re-imports.
set -euo pipefail

DOCKER=${DOCKER:-docker}
CACHE=${IMAGE_TEST_CACHE:-/var/cache/modelport-image-test}
SUITE=bookworm
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
PACKAGES=python3,python3-venv,ca-certificates,passwd

log() { echo "base-image: $*" >&2; }

certs=(/usr/local/share/ca-certificates/*.crt)
[ -e "${certs[0]}" ] || certs=()
# The tag changes when the recipe or the local certificates change.
key=$( { echo "$SUITE $MIRROR $PACKAGES v1"; cat "${certs[@]}" /dev/null; } | sha256sum | cut -c1-12)
tag="modelport-base:$SUITE-$key"

if "$DOCKER" image inspect "$tag" >/dev/null 2>&1; then
  log "using cached image $tag"
  echo "$tag"
  exit 0
fi

mkdir -p "$CACHE"
tarball="$CACHE/base-$SUITE-$key.tar"
if [ ! -s "$tarball" ]; then
  command -v debootstrap >/dev/null || { log "debootstrap is not installed"; exit 1; }
  root=$(mktemp -d "$CACHE/rootfs.XXXXXX")
  trap 'rm -rf "$root"' EXIT
  log "debootstrap $SUITE into $root (a few minutes, once)"
  debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$root" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 \
    || { tail -20 "$CACHE/debootstrap.log" >&2; exit 1; }
  for cert in "${certs[@]}"; do
    cp "$cert" "$root/usr/local/share/ca-certificates/"
  done
  chroot "$root" update-ca-certificates >/dev/null
  # What a container base carries no use for: package lists, downloaded .debs, docs.
  rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb \
         "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/*
  tar --numeric-owner -C "$root" -cf "$tarball.tmp" .
  mv "$tarball.tmp" "$tarball"
fi

log "importing $tarball as $tag"
# pip and requests use their own CA bundle unless told to use the system one.
"$DOCKER" import \
  --change 'ENV LANG=C.UTF-8' \
  --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
  --change 'ENV REQUESTS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt' \
  --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
  --change 'CMD ["python3"]' \
  "$tarball" "$tag" >/dev/null
echo "$tag"
