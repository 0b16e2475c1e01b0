#!/usr/bin/env bash
# Builds the worker image from this tree, with nothing pulled from any registry: the release
# `rideshare` binary, the shared libraries `ldd` says it loads (at their own paths) and the
# dynamic loader, on an empty (`FROM scratch`) base, with writable /data and /tmp.
#
#   scripts/build-worker-image.sh            builds rideshare-worker:latest
#   RIDESHARE_WORKER_IMAGE=name:tag scripts/build-worker-image.sh
#
# Copying the host's own libraries is what lets a scratch image run a dynamically linked binary:
# the image holds exactly the versions the binary was linked against, and no shell or package
# manager besides.
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE=${RIDESHARE_WORKER_IMAGE:-rideshare-worker:latest}

die() { echo "build-worker-image: $*" >&2; exit 1; }
command -v docker >/dev/null 2>&1 || die "docker not found"
command -v ldd >/dev/null 2>&1 || die "ldd not found"
docker info >/dev/null 2>&1 || die "the Docker engine does not answer (is dockerd running?)"

echo "build-worker-image: cargo build --release -p rideshare-svc --bin rideshare"
cargo build --release -p rideshare-svc --bin rideshare

# Asking cargo finds the target directory wherever CARGO_TARGET_DIR or a config put it.
target_dir=$(cargo metadata --no-deps --format-version 1 \
  | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
[ -n "$target_dir" ] || die "cannot find cargo's target directory"
binary="$target_dir/release/rideshare"
[ -x "$binary" ] || die "$binary was not built"

context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
mkdir -p "$context/rootfs/data" "$context/rootfs/tmp"
chmod 1777 "$context/rootfs/tmp"
cp "$binary" "$context/rootfs/rideshare"

# ldd prints `name => /path (addr)` for libraries and `/path (addr)` for the loader; the vdso
# has no file. -L copies the file a symlink names, at the symlink's path, which is the path the
# binary (or the loader) asks for.
libs=$(ldd "$binary" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' | sort -u)
[ -n "$libs" ] || die "ldd listed no libraries for $binary (a static binary needs none: remove this check)"
for lib in $libs; do
  cp -L --parents "$lib" "$context/rootfs/"
done
echo "build-worker-image: libraries: $(echo $libs)"

cat > "$context/Dockerfile" <<'DOCKERFILE'
FROM scratch
LABEL rideshare.image=worker
COPY rootfs/ /
WORKDIR /data
ENTRYPOINT ["/rideshare"]
DOCKERFILE

# Quiet unless it fails: the engine's chatter (a legacy-builder notice) is not news.
if ! out=$(docker build -t "$IMAGE" "$context" 2>&1); then
  echo "$out" >&2
  die "docker build failed"
fi
# The image this tag named before is now untagged: drop it (only ours, by the label).
docker image prune -f --filter label=rideshare.image=worker >/dev/null
size=$(docker image inspect -f '{{.Size}}' "$IMAGE")
echo "build-worker-image: built $IMAGE ($((size / 1024 / 1024)) MiB, $size bytes)"

docker run --rm "$IMAGE" --help >/dev/null || die "$IMAGE does not run: docker run --rm $IMAGE --help failed"
echo "build-worker-image: $IMAGE runs"
