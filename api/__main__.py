"""``python -m api``: the control API, supervising the dataflow.

Serves FactoryTX's ``/v1/...`` control API on ``127.0.0.1:8090`` by default
(``--host``/``--port``, or ``FACTORYFLOW_API_HOST``/``FACTORYFLOW_API_PORT``), logs to
stderr and ``$FACTORYFLOW_HOME/log/factorytx_web.log`` in the FactoryTX line format, and
starts the dataflow when a config is saved (``--no-start`` leaves it stopped). With
``FACTORYFLOW_API_KEY`` set, every request needs that key in ``X-API-Key``. The web UI is at
``/`` (docs/ui.md); its sparklines sample the records read every
``FACTORYFLOW_RATE_INTERVAL`` seconds (60).

SIGTERM or Ctrl-C stops the dataflow gracefully, then the API, and one line logs the
records delivered per stream; the exit status is 0.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal

import uvicorn

from api.app import create_app
from api.supervisor import Supervisor
from dataflows.home import WEB_LOG, home_dir
from dataflows.main import configure_logging, log_summary


def main(argv: list[str] | None = None, prog: str = "python -m api") -> None:
    """Parse the command line and serve until interrupted; then log one line with the
    records delivered per stream."""
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default=os.environ.get("FACTORYFLOW_API_HOST", "127.0.0.1"),
                        help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("FACTORYFLOW_API_PORT", 8090)))
    parser.add_argument("--no-start", action="store_true", help="do not start the dataflow")
    parser.add_argument("--stop-timeout", type=float, default=30.0,
                        help="seconds between SIGTERM and SIGKILL when stopping the dataflow")
    parser.add_argument("--restream-timeout", type=float, default=60.0,
                        help="seconds a restream waits for every stream to apply it")
    args = parser.parse_args(argv)
    home = home_dir()
    redacting = configure_logging(home, WEB_LOG)
    app = create_app(home, supervisor=Supervisor(home, stop_timeout=args.stop_timeout),
                     api_key=os.environ.get("FACTORYFLOW_API_KEY") or None,
                     restream_timeout=args.restream_timeout, autostart=not args.no_start,
                     redacting=redacting,
                     rate_interval=float(os.environ.get("FACTORYFLOW_RATE_INTERVAL", "60")))
    logging.getLogger("api").info("control API on http://%s:%d, home %s", args.host, args.port, home)
    # uvicorn shuts down on SIGINT and SIGTERM, then raises the signal again for the handlers
    # it found; these take it, so the summary below is logged and the exit status is 0
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: None)
    # keep-alive past the 5 s default: a client reusing a connection the server just timed out
    # gets it closed under it, the usual cause of an unanswered request under load
    uvicorn.run(app, host=args.host, port=args.port, log_config=None, access_log=True, timeout_keep_alive=65)
    log_summary(home, "control API stopped, the dataflow with it")


if __name__ == "__main__":
    main()
