#!/bin/sh
# Creates the bytewax recovery directory on first start (never touches an existing one),
# copies $FACTORYFLOW_SEED_CONFIG to $FACTORYFLOW_HOME/conf.d/config.json when no config is
# saved yet (the API service), then runs the command (by default the dataflow).
set -e
python -c 'import os, pathlib; from dataflows.main import init_recovery; init_recovery(pathlib.Path(os.environ["FACTORYFLOW_RECOVERY"]))'
if [ -n "${FACTORYFLOW_SEED_CONFIG:-}" ] && [ ! -e "$FACTORYFLOW_HOME/conf.d/config.json" ]; then
    mkdir -p "$FACTORYFLOW_HOME/conf.d"
    cp "$FACTORYFLOW_SEED_CONFIG" "$FACTORYFLOW_HOME/conf.d/config.json"
fi
exec "$@"
