#!/usr/bin/env bash
# Builds the factoryflow image, factoryflow:local, where no registry can be pulled from:
#   1. a minimal Debian bookworm with Python (debootstrap, from this machine's Debian mirror,
#      trusting this machine's extra CA certificates and using its apt sources) is imported
#      as factoryflow-base:bookworm; its tarball is kept in .cache/containers/ so a second
#      build imports it instead;
#   2. compose/Dockerfile is built on it (BASE), with this machine's pip index and CA bundle
#      (PIP_INDEX_URL, PIP_CERT: from the environment or pip's config files).
# With registry access, `docker build -f compose/Dockerfile -t factoryflow:local .` does
# the same on python:3.12-slim.
#
#   compose/build-image.sh [--tag TAG] [--base-only]
#
# Needs a running Docker engine (DOCKER_HOST), debootstrap (Debian's package) and root for
# debootstrap. FACTORYFLOW_DEBIAN_MIRROR overrides the mirror. The test suite builds its
# image with this script (tests/containers/).
set -euo pipefail
cd "$(dirname "$0")/.."
tag=factoryflow:local
base=factoryflow-base:bookworm
base_only=0
while [ $# -gt 0 ]; do
  case "$1" in
    --tag) tag=$2; shift 2 ;;
    --base-only) base_only=1; shift ;;
    *) echo "build-image.sh: unknown option $1 (--tag TAG, --base-only)" >&2; exit 2 ;;
  esac
done
say() { echo "build-image.sh: $*" >&2; }
command -v docker >/dev/null || { say "docker is not installed (Debian: apt-get install docker.io)"; exit 1; }
docker version --format '{{.Server.Version}}' >/dev/null 2>&1 \
  || { say "no Docker engine answers at ${DOCKER_HOST:-the default socket}; start dockerd first"; exit 1; }

# This machine's Debian mirror: the first bookworm source of apt's configuration.
mirror() {
  if [ -n "${FACTORYFLOW_DEBIAN_MIRROR:-}" ]; then echo "$FACTORYFLOW_DEBIAN_MIRROR"; return; fi
  python3 - <<'PY'
import glob, re
for path in sorted(glob.glob("/etc/apt/sources.list.d/*.sources")):
    for stanza in open(path).read().split("\n\n"):
        fields = dict(re.findall(r"^(\w[\w-]*):\s*(.+)$", stanza, re.M))
        if "bookworm" in fields.get("Suites", "").split() and "security" not in fields.get("URIs", ""):
            print(fields["URIs"].split()[0]); raise SystemExit
for path in ["/etc/apt/sources.list", *sorted(glob.glob("/etc/apt/sources.list.d/*.list"))]:
    try:
        lines = open(path).read().splitlines()
    except OSError:
        continue
    for line in lines:
        words = line.split("#")[0].split()
        urls = [w for w in words[1:] if "://" in w]
        if words[:1] == ["deb"] and urls and "bookworm" in words and "security" not in urls[0]:
                print(urls[0]); raise SystemExit
print("http://deb.debian.org/debian")
PY
}

if ! docker image inspect "$base" >/dev/null 2>&1; then
  cache=.cache/containers
  tarball=$cache/base-bookworm.tar
  mkdir -p "$cache"
  if [ ! -s "$tarball" ]; then
    command -v debootstrap >/dev/null || [ -x /usr/sbin/debootstrap ] \
      || { say "debootstrap is not installed (Debian: apt-get install debootstrap)"; exit 1; }
    [ "$(id -u)" = 0 ] || { say "debootstrap needs root"; exit 1; }
    url=$(mirror)
    root=$(mktemp -d "$cache/rootfs.XXXXXX")
    trap 'rm -rf "$root"' EXIT
    say "debootstrap of a minimal bookworm with Python from $url (about a minute)"
    PATH=$PATH:/usr/sbin debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
      bookworm "$root" "$url" > "$cache/debootstrap.log" 2>&1 \
      || { tail -20 "$cache/debootstrap.log" >&2; say "debootstrap failed; its log: $cache/debootstrap.log"; exit 1; }
    # this machine's apt sources and extra CA certificates, so the image installs from where it does
    if ls /etc/apt/sources.list.d/*.sources >/dev/null 2>&1; then
      cp /etc/apt/sources.list.d/*.sources "$root/etc/apt/sources.list.d/"
      rm -f "$root/etc/apt/sources.list"
    fi
    if ls /usr/local/share/ca-certificates/*.crt >/dev/null 2>&1; then
      cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/"
      chroot "$root" update-ca-certificates >/dev/null
    fi
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
    tar -C "$root" -cf "$tarball.partial" .
    mv "$tarball.partial" "$tarball"
    rm -rf "$root"
    trap - EXIT
  fi
  say "importing $tarball as $base"
  docker import --change 'CMD ["/bin/bash"]' "$tarball" "$base" >/dev/null
fi
[ "$base_only" = 1 ] && { say "$base is ready"; exit 0; }

# this machine's pip settings: the environment first, then pip's config files
pip_setting() {
  python3 - "$1" <<'PY'
import configparser, os, sys
key = sys.argv[1]
value = os.environ.get("PIP_" + key.upper().replace("-", "_"), "")
if not value:
    for path in ("/etc/pip.conf", os.path.expanduser("~/.config/pip/pip.conf"), os.path.expanduser("~/.pip/pip.conf")):
        parser = configparser.ConfigParser()
        parser.read(path)
        value = parser.get("global", key, fallback=value)
print(value)
PY
}
index=$(pip_setting index-url)
cert=$(pip_setting cert)
# the base trusts this machine's CAs (above): pip in the build reads Debian's bundle
[ -n "$cert" ] && cert=/etc/ssl/certs/ca-certificates.crt
say "building $tag on $base${index:+, pip index $index}"
started=$(date +%s)
docker build --network host -f compose/Dockerfile --build-arg "BASE=$base" \
  --build-arg "PIP_INDEX_URL=$index" --build-arg "PIP_CERT=$cert" -t "$tag" . >&2
size=$(docker image inspect "$tag" --format '{{.Size}}')
say "built $tag in $(( $(date +%s) - started )) s: $(( size / 1000000 )) MB"
