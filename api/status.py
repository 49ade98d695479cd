"""What ``GET /v1/status``, ``GET /v1/streams``, ``GET /v1/log/stream`` and ``/metrics`` read.

Everything here reads state the dataflow writes (the ledger under
``$FACTORYFLOW_HOME/state``, its log files) or the machine (psutil); nothing here
talks to the dataflow process.

Implements the ``status``, ``streams`` and ``log/stream`` responses of
``shared/specs/factorytx-rest-api.txt``.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from api.rates import RecordRates
from dataflows.config import Config
from dataflows.home import CORE_LOG, WEB_LOG
from dataflows.ledger import Ledger, Marker, ledger_path

GIB = 1024.0**3
#: The log files ``GET /v1/log/stream/<log_filename>`` serves; any other name is a 404.
LOG_FILES = (CORE_LOG, WEB_LOG)


#: Shortest interval psutil's CPU percentage is measured over, in seconds.
CPU_INTERVAL = 1.0
_cpu: dict[str, float | None] = {"at": None, "percent": None}
_cpu_lock = threading.Lock()


def cpu_percent() -> float:
    """The machine's CPU use (0-100) since the previous measurement, measured at most every
    :data:`CPU_INTERVAL` seconds: psutil measures since its previous call, so two requests
    a moment apart (the UI's first page load makes two) read ~0 % without this. The first
    call starts the measurement and waits :data:`CPU_INTERVAL` for it."""
    with _cpu_lock:
        if _cpu["percent"] is None:  # the first reading: measure over one interval, now
            psutil.cpu_percent(interval=None)
            time.sleep(CPU_INTERVAL)
        elif time.monotonic() - (_cpu["at"] or 0.0) < CPU_INTERVAL:
            return _cpu["percent"]
        percent = float(psutil.cpu_percent(interval=None))
        _cpu["percent"], _cpu["at"] = percent, time.monotonic()
        return percent


def machine_info(path: Path) -> dict[str, Any]:
    """CPU, memory and disk (of the file system holding ``path``) in FactoryTX's units:
    sizes in GiB as floats, percentages 0-100, ``cpu_count`` a float."""
    disk = psutil.disk_usage(str(path))
    memory = psutil.virtual_memory()
    return {
        "disk": {"total_gb": disk.total / GIB, "percent_free": 100.0 - disk.percent,
                 "percent_used": float(disk.percent), "used_gb": disk.used / GIB,
                 "available_gb": disk.free / GIB},
        "cpu": {"percent": cpu_percent(),
                "cpu_count": float(psutil.cpu_count() or 0)},
        "memory": {"total_gb": memory.total / GIB, "percent_free": 100.0 - memory.percent,
                   "percent_used": float(memory.percent),
                   "used_gb": (memory.total - memory.available) / GIB,
                   "available_gb": memory.available / GIB},
    }


def services(config: Config | None, ledger: Ledger) -> dict[str, Any]:
    """``factorytx.services`` while the dataflow runs: per receiver and transmit, its type
    and ``status`` (``running``, or ``stopped`` for a paused transmit), and for receivers
    the streams and their error markers; :func:`with_state` gives it for the dataflow's
    state now."""
    if config is None:
        return {}
    errors = ledger.error_markers()
    out: dict[str, Any] = {}
    for receiver in config.data_receiver:
        name = receiver.data_receiver_name
        out[name] = {"component_type": "Receiver", "protocol": type(receiver).__struct_config__.tag,
                     "status": "running", "streams": len(receiver.stream_list),
                     "streams_failing": errors.get(name, 0)}
    for transmit in config.data_transmit:
        status = ledger.transmit_status(transmit.transmit_name)
        out[transmit.transmit_name] = {
            "component_type": "Transmit", "transmit_type": type(transmit).__struct_config__.tag,
            "status": "stopped" if status.paused else "running",
            "paused": status.paused}
    return out


def with_state(services_running: dict[str, Any], running: bool) -> dict[str, Any]:
    """:func:`services` as computed for a running dataflow, for the dataflow's state now
    (stopped: every service ``stopped``)."""
    if running:
        return services_running
    return {name: {**service, "status": "stopped"} for name, service in services_running.items()}


def last_data_transmit(config: Config | None, ledger: Ledger) -> dict[str, Any]:
    """Per transmit: records delivered, last success and last error (ISO UTC), outbox depth."""
    if config is None:
        return {}
    out = {}
    for transmit in config.data_transmit:
        status = ledger.transmit_status(transmit.transmit_name)
        out[transmit.transmit_name] = {
            "last_success": status.last_success_at, "records_delivered": status.records_delivered,
            "outbox_records": status.outbox_records, "outbox_bytes": status.outbox_bytes,
            "last_error": status.last_error, "last_error_at": status.last_error_at,
            "paused": status.paused}
    return out


def streams(document_config: Config | None, ledger: Ledger,
            rates: RecordRates | None = None) -> list[dict[str, Any]]:
    """``GET /v1/streams``: every configured stream with its markers, plus factoryflow's
    ``records_received``, ``records_delivered`` (per transmit), ``last_timestamp`` (the
    newest record delivered, ISO UTC), ``state`` (``ok``, ``warning``, ``error``: its
    worst marker) and ``records_per_minute`` (records read per minute over the last hour,
    oldest first, from ``rates``)."""
    if document_config is None:
        return []
    by_stream: dict[tuple[str, str], list[Marker]] = {}
    for marker in ledger.markers():
        by_stream.setdefault((marker.asset, marker.stream_type), []).append(marker)
    received = ledger.received()
    progress = ledger.all_progress()
    out = []
    for receiver, stream in document_config.streams():
        name = receiver.data_receiver_name
        mine = [m for m in by_stream.get((stream.asset, stream.stream_type), [])
                if m.component == name or m.component_type != "Receiver"]
        key = str(stream.key)
        delivered = {t.transmit_name: progress.get((t.transmit_name, key), (0, None))
                     for t in document_config.data_transmit}
        stamps = [last for _, last in delivered.values() if last]
        out.append({
            "stream": key, "asset": stream.asset, "stream_type": stream.stream_type,
            "data_receiver": name,
            # factoryflow's additions: what was read and delivered, for the UI and scripts
            "records_received": received.get((name, key), 0),
            "records_delivered": {t: n for t, (n, _) in delivered.items()},
            "last_timestamp": max(stamps) if stamps else None,
            "state": ("error" if any(m.level == "error" for m in mine)
                      else "warning" if mine else "ok"),
            "records_per_minute": rates.per_minute(name, key) if rates is not None else [],
            "markers": [{"component": m.component, "component_type": m.component_type,
                         "asset": m.asset, "stream_type": m.stream_type, "category": m.category,
                         "timestamp": m.timestamp, "level": m.level, "message": m.message}
                        for m in mine]})
    return out


def tail(path: Path, lines: int) -> list[str]:
    """The last ``lines`` lines of the file at ``path`` ([] when it does not exist), read
    backwards in blocks so a big log is never read whole."""
    try:
        handle = open(path, "rb")  # noqa: SIM115 - closed below
    except FileNotFoundError:
        return []
    with handle:
        end = handle.seek(0, os.SEEK_END)
        data = b""
        position = end
        while position > 0 and data.count(b"\n") <= lines:
            step = min(65536, position)
            position -= step
            handle.seek(position)
            data = handle.read(step) + data
    text = data.decode("utf-8", errors="replace").splitlines()
    return text[-lines:]


def last_modified(path: Path) -> str | None:
    """The file's modification time as FactoryTX writes it (UTC, ``%Y-%m-%d %H:%M:%S.%f``)."""
    try:
        mtime = path.stat().st_mtime
    except FileNotFoundError:
        return None
    return datetime.fromtimestamp(mtime, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


class LedgerCollector(Collector):
    """Prometheus metrics read from the ledger at each scrape.

    - ``factoryflow_records_received_total{receiver,stream}``
    - ``factoryflow_records_delivered_total{transmit,stream}``
    - ``factoryflow_transmit_outbox_records{transmit}`` and ``..._outbox_bytes{transmit}``
    - ``factoryflow_transmit_lag_seconds{transmit}``: seconds since the last successful
      delivery while records wait in the outbox, else 0
    - ``factoryflow_component_errors_total{component,component_type}``
    - ``factoryflow_dataflow_up`` and ``factoryflow_dataflow_crash_restarts_total``
    """

    def __init__(self, home: Path, supervisor: Any) -> None:
        self._home = home
        self._supervisor = supervisor

    def collect(self) -> Iterator[Any]:
        ledger = Ledger(ledger_path(self._home))
        try:
            received = CounterMetricFamily("factoryflow_records_received", "Records read per stream",
                                           labels=["receiver", "stream"])
            for (receiver, stream), count in sorted(ledger.received().items()):
                received.add_metric([receiver, stream], count)
            delivered = CounterMetricFamily("factoryflow_records_delivered",
                                            "Records durably delivered per transmit and stream",
                                            labels=["transmit", "stream"])
            for (transmit, stream), count in sorted(ledger.delivered().items()):
                delivered.add_metric([transmit, stream], count)
            errors = CounterMetricFamily("factoryflow_component_errors", "Errors per component",
                                         labels=["component", "component_type"])
            for (component, kind), count in sorted(ledger.error_counts().items()):
                errors.add_metric([component, kind], count)
            depth = GaugeMetricFamily("factoryflow_transmit_outbox_records",
                                      "Records waiting in a transmit's outbox", labels=["transmit"])
            size = GaugeMetricFamily("factoryflow_transmit_outbox_bytes",
                                     "Bytes waiting in a transmit's outbox", labels=["transmit"])
            lag = GaugeMetricFamily("factoryflow_transmit_lag_seconds",
                                    "Seconds since the last delivery while records wait",
                                    labels=["transmit"])
            now = datetime.now(UTC)
            for transmit in sorted({t for t, _ in ledger.delivered()} | set(ledger.transmits())):
                status = ledger.transmit_status(transmit)
                waiting = status.outbox_records or 0
                depth.add_metric([transmit], waiting)
                size.add_metric([transmit], status.outbox_bytes or 0)
                since = (now - datetime.fromisoformat(status.last_success_at)).total_seconds() \
                    if status.last_success_at else 0.0
                lag.add_metric([transmit], since if waiting else 0.0)
        finally:
            ledger.close()
        up = GaugeMetricFamily("factoryflow_dataflow_up", "1 while the dataflow process runs")
        up.add_metric([], 1.0 if self._supervisor.status == "running" else 0.0)
        restarts = CounterMetricFamily("factoryflow_dataflow_crash_restarts",
                                       "Restarts of the dataflow after a crash")
        restarts.add_metric([], self._supervisor.info()["crash_restarts"])
        yield from (received, delivered, errors, depth, size, lag, up, restarts)
