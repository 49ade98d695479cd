"""Timer slack: how late the kernel may wake the job's threads from a timed wait (issue 31,
idle streams).

bytewax's worker loop parks for at most 1 ms at a time, whatever the dataflow holds, to look
for signals: an idle job wakes 1,000 times a second, and those wake-ups alone cost 3 to 4 %
of a core on this project's 2-core machine (``python -m bench --only idle``, one stream).
Linux's timer slack (``prctl(PR_SET_TIMERSLACK)``, man 2 prctl) lets the kernel fire a
timed wait up to that long after it is due, together with other timers; a busy worker never
parks, so only idle time is stretched. With :data:`DEFAULT_SECONDS` = 5 ms the idle loop
wakes about 170 times a second: one idle stream costs 1.2 % of a core instead of 3.8 %,
1,000 idle streams 3.9 % instead of 6.6 % (``docs/performance.md``, "Idle streams").

The slack is set on the thread that builds the dataflow (the worker's, or the one that
starts the workers) and is inherited by every thread started after it: a timed wait in the
job (a stream's next poll, a read checked on every 10 ms, the MQTT receiver's 5 ms linger,
librdkafka's ``linger.ms``) may end up to that much later. ``FACTORYFLOW_TIMER_SLACK``
(seconds) sets it; ``0`` leaves the kernel's default (50 µs). Elsewhere than Linux this
does nothing.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys

__all__ = ["DEFAULT_SECONDS", "TIMER_SLACK_ENV", "configured_seconds", "set_timer_slack"]

#: Environment variable: the timer slack in seconds (0: the kernel's default).
TIMER_SLACK_ENV = "FACTORYFLOW_TIMER_SLACK"
#: The default slack in seconds.
DEFAULT_SECONDS = 0.005
#: At most this (seconds): a timed wait later than that would be felt.
MAX_SECONDS = 1.0
#: ``PR_SET_TIMERSLACK`` and ``PR_GET_TIMERSLACK`` (linux/prctl.h).
_PR_SET_TIMERSLACK, _PR_GET_TIMERSLACK = 29, 30

_log = logging.getLogger("factoryflow.timer_slack")


def configured_seconds(environ: dict[str, str] | os._Environ[str] = os.environ) -> float:
    """The slack ``FACTORYFLOW_TIMER_SLACK`` asks for, in seconds (:data:`DEFAULT_SECONDS`
    when unset). A value that is not a number from 0 to :data:`MAX_SECONDS` is logged as
    an error naming the variable, and the default is used; never raises."""
    text = environ.get(TIMER_SLACK_ENV)
    if text is None or not text.strip():
        return DEFAULT_SECONDS
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds <= MAX_SECONDS:
        _log.error("%s=%r is not a number of seconds from 0 to %g; using %g", TIMER_SLACK_ENV, text,
                   MAX_SECONDS, DEFAULT_SECONDS)
        return DEFAULT_SECONDS
    return seconds


def set_timer_slack(seconds: float) -> int | None:
    """Set the calling thread's timer slack to ``seconds`` (threads it starts later inherit
    it); 0 leaves it as it is.

    :returns: the thread's slack now, in nanoseconds; None where it cannot be set (not
        Linux, or the call failed: logged at debug level, nothing raised).
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if seconds > 0 and libc.prctl(_PR_SET_TIMERSLACK, ctypes.c_ulong(round(seconds * 1e9)), 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
        return int(libc.prctl(_PR_GET_TIMERSLACK, 0, 0, 0, 0))
    except (OSError, AttributeError) as exc:
        _log.debug("timer slack not set: %s", exc)
        return None
