#!/bin/sh
# Creates the (empty) recovery directory on the volume: the dataflow initialises it at its
# first start, and refuses, in one line, to start over where records were delivered before
# and the state is gone (dataflows/recovery.py; FACTORYFLOW_FRESH_STATE=1 starts over).
# Copies $FACTORYFLOW_SEED_CONFIG to $FACTORYFLOW_HOME/conf.d/config.json when no config is
# saved yet (the API service), then runs the command (by default the dataflow).
set -e
mkdir -p "$FACTORYFLOW_RECOVERY"
if [ -n "${FACTORYFLOW_SEED_CONFIG:-}" ] && [ ! -e "$FACTORYFLOW_HOME/conf.d/config.json" ]; then
    mkdir -p "$FACTORYFLOW_HOME/conf.d"
    cp "$FACTORYFLOW_SEED_CONFIG" "$FACTORYFLOW_HOME/conf.d/config.json"
fi
exec "$@"
