#!/usr/bin/env bash
# Sets up factoryflow with its test dependencies and the real services the tests start
# (PostgreSQL, MariaDB, Samba, Kafka, S3Proxy, Azurite: see scripts/setup.sh), then runs the whole test suite. Options go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test --services
exec .venv/bin/python -m pytest "$@"
