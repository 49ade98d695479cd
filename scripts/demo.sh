#!/usr/bin/env bash
# Sets up factoryflow, then runs the main job on its embedded default (the demo plant) until Ctrl-C.
# Options go to `python -m dataflows.demo` (--home DIR, --seconds N, --interval S).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m dataflows.demo "$@"
