"""The one backoff policy of factoryflow, on tenacity: failing streams and senders wait
``initial * 2**(n-1)`` seconds plus a random jitter of up to ``jitter`` seconds before
retry ``n`` (1-based), capped at ``maximum``, so many retries never move in step
(tenacity's ``wait_exponential_jitter``).

Blocking callers (a sender thread) hand :meth:`Backoff.wait` to ``tenacity.Retrying``;
callers that must never sleep (a receiver partition sets bytewax's ``next_awake``
instead) ask :meth:`Backoff.delay` for retry ``n``'s wait and schedule it.
"""

from __future__ import annotations

from dataclasses import dataclass

import tenacity

#: Longest wait between two retries, in seconds: a down endpoint is probed at least this often,
#: so delivery resumes within it once the endpoint is back.
MAX_BACKOFF = 30.0


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with jitter (seconds).

    :ivar initial: the wait before the first retry, without jitter.
    :ivar maximum: the cap, jitter included.
    :ivar jitter: the most random seconds added to each wait.
    """

    initial: float = 1.0
    maximum: float = MAX_BACKOFF
    jitter: float = 1.0

    def wait(self) -> tenacity.wait.wait_base:
        """The tenacity wait strategy of this policy."""
        return tenacity.wait_exponential_jitter(multiplier=self.initial, max=self.maximum,
                                                jitter=self.jitter)

    def delay(self, attempt: int) -> float:
        """The wait before retry number ``attempt`` (1-based), in seconds."""
        state = tenacity.RetryCallState(None, None, (), {})  # type: ignore[arg-type]
        state.attempt_number = attempt
        return float(self.wait()(state))


#: Retries of a failed delivery to an endpoint (the Sight Machine sender, a spool's
#: forwarder): 1 s doubling, up to 1 s of jitter, capped at :data:`MAX_BACKOFF`.
ENDPOINT_BACKOFF = Backoff(initial=1.0, jitter=1.0)


def stream_backoff(poll_interval: float) -> Backoff:
    """A failing stream's policy: the poll interval doubled per failure, capped at
    :data:`MAX_BACKOFF`, with up to 10 % jitter."""
    return Backoff(initial=poll_interval, maximum=MAX_BACKOFF, jitter=0.1 * poll_interval)
