#!/usr/bin/env bash
# Build the container image on this machine and smoke-test it (`make image-test`, run by CI).
#
#   1. Debian's docker.io, docker-compose and debootstrap, installed when missing;
#      compose.yaml checked by docker-compose config.
#   2. A Docker engine: the running one, or dockerd started here (no bridge, no iptables rules:
#      builds and containers use the host network) and stopped again on exit.
#   3. A bookworm base image from Debian's packages with this machine's CA certificates
#      (deploy/ci/base-image.sh), cached as an image and as a tarball.
#   4. The ImageNet classifier converted to ONNX on this host (the image holds no PyTorch),
#      cached by the sources that make it.
#   5. docker build --build-arg BASE_IMAGE=<that base>; the layer cache makes a rebuild after
#      a code change take seconds. The image must stay under 1 GB.
#   6. deploy/ci/smoke_test.py: two containers against the local PostgreSQL and Redis.
# Containers, the scratch database and the shared artifact folder are removed on exit.
set -euo pipefail
cd "$(dirname "$0")/../.."

DOCKER=${DOCKER:-/usr/bin/docker}  # Debian's client, the same release as Debian's engine
PYTHON=${IMAGE_TEST_PYTHON:-.venv/bin/python}  # the project virtualenv (PyTorch, scikit-image)
CACHE=${IMAGE_TEST_CACHE:-/var/cache/modelport-image-test}
IMAGE=${IMAGE_TEST_TAG:-modelport:ci}
MAX_IMAGE_BYTES=${MAX_IMAGE_BYTES:-1000000000}
export DOCKER IMAGE_TEST_CACHE="$CACHE"

T0=$(date +%s)
mark() { echo "image-test: [$(( $(date +%s) - T0 ))s] $*"; }
mkdir -p "$CACHE"

# 1. Tools
if [ ! -x /usr/sbin/dockerd ] || [ ! -x "$DOCKER" ] || ! command -v debootstrap >/dev/null \
    || ! command -v docker-compose >/dev/null; then
  mark "installing docker.io, docker-compose and debootstrap from Debian"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io docker-compose debootstrap >/dev/null
fi

# compose.yaml as Compose reads it (the secrets it insists on filled with throwaway values).
compose_env=$(mktemp)
sed -e 's/^\(POSTGRES_PASSWORD\|MINIO_ROOT_PASSWORD\|MODELPORT_JWT_SECRET\)=$/\1=throwaway-value-for-config-check-only/' \
  deploy/compose.env.example >"$compose_env"
docker-compose --env-file "$compose_env" -f compose.yaml config -q
rm -f "$compose_env"
mark "compose.yaml accepted by $(docker-compose version --short)"

# 2. Engine
started_engine=""
cleanup() {
  if [ -n "$started_engine" ]; then
    kill "$started_engine" 2>/dev/null || true
    wait "$started_engine" 2>/dev/null || true
  fi
}
trap cleanup EXIT
if ! "$DOCKER" info >/dev/null 2>&1; then
  mark "starting dockerd (log: $CACHE/dockerd.log)"
  /usr/sbin/dockerd --bridge=none --iptables=false --ip-forward=false --ip-masq=false \
    >"$CACHE/dockerd.log" 2>&1 &
  started_engine=$!
  for _ in $(seq 1 60); do
    "$DOCKER" info >/dev/null 2>&1 && break
    kill -0 "$started_engine" 2>/dev/null || { tail -20 "$CACHE/dockerd.log"; exit 1; }
    sleep 0.5
  done
  "$DOCKER" info >/dev/null
fi
mark "engine $("$DOCKER" version --format '{{.Server.Version}}')"

# 3. Base image
BASE_IMAGE=$(deploy/ci/base-image.sh)
mark "base image $BASE_IMAGE"

# 4. The converted image classifier, made once per change of what makes it
key=$(cat src/modelport/builtin/imagenet.py deploy/docker/convert_builtins.py requirements.lock \
      | sha256sum | cut -c1-12)
artifacts="$CACHE/builtins-$key"
if [ ! -s "$artifacts/imagenet-classifier.onnx" ]; then
  mark "converting the ImageNet classifier to ONNX on the host"
  "$PYTHON" deploy/docker/convert_builtins.py --out "$artifacts.tmp" >/dev/null
  rm -rf "$artifacts" && mv "$artifacts.tmp" "$artifacts"
fi
cp -p "$artifacts"/imagenet-classifier.onnx "$artifacts"/imagenet-classifier.json deploy/builtins/

# 5. Build
build_start=$(date +%s)
DOCKER_BUILDKIT=1 "$DOCKER" build --network host --build-arg BASE_IMAGE="$BASE_IMAGE" \
  --tag "$IMAGE" . >"$CACHE/build.log" 2>&1 || { tail -40 "$CACHE/build.log"; exit 1; }
size=$("$DOCKER" image inspect --format '{{.Size}}' "$IMAGE")
mark "built $IMAGE in $(( $(date +%s) - build_start ))s: $(( size / 1000000 )) MB"
# Superseded builds of this image only; nothing else the engine holds.
"$DOCKER" image prune --force --filter label=org.opencontainers.image.title=modelport >/dev/null
if [ "$size" -ge "$MAX_IMAGE_BYTES" ]; then
  echo "image-test: the image is $size bytes, over the $MAX_IMAGE_BYTES limit"
  exit 1
fi

# 6. Smoke test
if [ -z "${MODELPORT_DATASETS_DIR:-}" ]; then
  for dir in ../shared/datasets /work/shared/datasets; do
    [ -f "$dir/winequality-red.csv" ] && { export MODELPORT_DATASETS_DIR="$dir"; break; }
  done
fi
"$PYTHON" deploy/ci/smoke_test.py --image "$IMAGE" --docker "$DOCKER"
mark "done"
