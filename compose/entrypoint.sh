#!/bin/sh
# Creates the bytewax recovery directory on first start (never touches an existing one),
# then runs the command (by default the dataflow).
set -e
python -c 'import os, pathlib; from dataflows.main import init_recovery; init_recovery(pathlib.Path(os.environ["FACTORYFLOW_RECOVERY"]))'
exec "$@"
