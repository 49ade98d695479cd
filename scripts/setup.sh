#!/usr/bin/env bash
# Sets up factoryflow in this checkout: a Python 3.11/3.12 virtualenv in .venv with the project.
#   --test      also the test dependencies
#   --services  also the real services the tests start: PostgreSQL, MariaDB and Samba (Debian's
#               packages), Apache Kafka, S3Proxy and Eclipse Tahu's Sparkplug B edge node
#               (their jars from Maven Central, run with the machine's Java), Azurite, Cirrus
#               Link's Sparkplug B client and node-opcua's sample server (npm, run with
#               the machine's Node.js) and Chromium (Debian's package, for the web UI's
#               browser tests), and Docker (Debian's docker.io, docker-compose and debootstrap:
#               the container tests build their images without a registry)
#   --bench     also what `python -m bench` compares with (implies --test; add --services):
#               kcat (Debian's package), connectorx, ADBC's PostgreSQL driver and pyarrow
# Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/packages.sh
. scripts/packages.sh
sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
want_test=0; want_services=0; want_bench=0
for arg in "$@"; do
  case "$arg" in
    --test) want_test=1 ;;
    --services) want_services=1 ;;
    --bench) want_bench=1; want_test=1 ;;
    *) echo "setup.sh: unknown option $arg" >&2; exit 2 ;;
  esac
done

python=${PYTHON:-}
if [ -z "$python" ]; then
  for candidate in python3.12 python3.11 python3; do
    if command -v "$candidate" >/dev/null && "$candidate" -c 'import sys; sys.exit(not ((3, 11) <= sys.version_info[:2] <= (3, 12)))' 2>/dev/null; then
      python=$candidate; break
    fi
  done
fi
[ -n "$python" ] || { echo "setup.sh: Python 3.11 or 3.12 is needed (bytewax 0.21.1 has wheels up to 3.12)" >&2; exit 1; }

[ -x .venv/bin/python ] || "$python" -m venv .venv
extras=""; [ "$want_test" = 1 ] && extras="[test]"; [ "$want_bench" = 1 ] && extras="[test,bench]"
stamp=".venv/.installed${extras}"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "setup.sh: installing factoryflow${extras} and its Python packages into .venv (minutes the first time)" >&2
  .venv/bin/python -m pip install --disable-pip-version-check --progress-bar off -e ".${extras}" |
    { grep --line-buffered -E '^(Collecting|Installing|Successfully)' || true; } | sed -u 's/^/setup.sh: pip: /' >&2
  touch "$stamp"
fi

if [ "$want_bench" = 1 ] && ! command -v kcat >/dev/null; then
  apt_install "the bench's Kafka limit" kcat
fi

if [ "$want_services" = 1 ]; then
  if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    apt_install "the sql receiver's tests" postgresql
  fi
  if [ "$(id -u)" = 0 ] && ! id postgres >/dev/null 2>&1; then
    useradd --system --no-create-home postgres  # initdb refuses to run as root
  fi
  if [ ! -x /usr/sbin/mariadbd ] && ! command -v mariadbd >/dev/null; then
    apt_install "the sql receiver's MariaDB tests" mariadb-server
  fi
  if ! command -v smbd >/dev/null && [ ! -x /usr/sbin/smbd ]; then
    apt_install "the smb receiver's tests" samba
  fi
  if [ ! -x /usr/sbin/mosquitto ] && ! command -v mosquitto >/dev/null; then
    apt_install "the MQTT connectors' broker" mosquitto
  fi
  if ! command -v npm >/dev/null; then
    apt_install "Azurite and node-opcua" nodejs npm
  fi
  if ! command -v java >/dev/null || ! command -v javac >/dev/null || ! command -v mvn >/dev/null; then
    apt_install "Kafka, S3Proxy and Eclipse Tahu's edge node" default-jdk-headless maven
  fi
  if ! command -v dockerd >/dev/null && [ ! -x /usr/sbin/dockerd ]; then
    apt_install "the container tests' engine" docker.io
  fi
  if ! command -v docker-compose >/dev/null; then
    apt_install "the compose stack's tests" docker-compose
  fi
  if ! command -v debootstrap >/dev/null && [ ! -x /usr/sbin/debootstrap ]; then
    apt_install "the container tests' base image (no registry is needed)" debootstrap
  fi
  if ! command -v chromium >/dev/null; then
    apt_install "the web UI's browser tests" chromium
  fi
  # fetched once into .cache/: the Kafka broker's, S3Proxy's and Eclipse Tahu's jars, Azurite from npm
  .venv/bin/python -c 'from tests.services.kafka import kafka_jars; print("setup.sh: Kafka jars in", kafka_jars())'
  .venv/bin/python -c 'from tests.services.s3proxy import s3proxy_jars; print("setup.sh: S3Proxy jars in", s3proxy_jars())'
  .venv/bin/python -c 'from tests.services.tahu import tahu_classpath as t; print("setup.sh: Eclipse Tahu in", t().split(":")[-1])'
  .venv/bin/python -c 'from tests.services.azurite import azurite_bin; print("setup.sh: Azurite in", azurite_bin())'
  .venv/bin/python -c 'from tests.services.cirruslink import cirruslink_modules as c; print("setup.sh: Cirrus Link sparkplug-client in", c())'
  .venv/bin/python -c 'from tests.services.opcua import node_opcua_sample_server_script as s; print("setup.sh: node-opcua sample server in", s().parent)'
fi
