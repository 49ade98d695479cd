#!/bin/sh
# The image's entrypoint (under tini): copies $FACTORYFLOW_SEED_CONFIG to
# $FACTORYFLOW_HOME/conf.d/config.json when no config is saved yet (the API service), then
# runs `factoryflow` with the container's command (`run` by default; `api`, `validate FILE`,
# `set-aside FILE`). A command that is not one of factoryflow's runs as it is (e.g. `sh`).
# `factoryflow run` initialises the recovery directory on the volume at its first start and
# refuses, in one line, to start over where records were delivered before and the state is
# gone (dataflows/recovery.py; FACTORYFLOW_FRESH_STATE=1 starts over).
set -e
if [ -n "${FACTORYFLOW_SEED_CONFIG:-}" ] && [ ! -e "$FACTORYFLOW_HOME/conf.d/config.json" ]; then
    mkdir -p "$FACTORYFLOW_HOME/conf.d"
    cp "$FACTORYFLOW_SEED_CONFIG" "$FACTORYFLOW_HOME/conf.d/config.json"
fi
case "${1:-run}" in
    run|api|validate|set-aside|-h|--help) exec factoryflow "$@" ;;
    *) exec "$@" ;;
esac
