"""Change notices over Redis Pub/Sub (docs/notifications.md): the subscriber thread."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from stuisession.stores.base import ChangeEvent

log = logging.getLogger("stuisession.stores.redis")


def publish(client: Any, channel: str, notice: bytes, scrub: Callable[[str], str]) -> None:
    """PUBLISH a sealed *notice* on *channel*; a failure is logged (a hint), never raised."""
    try:
        client.publish(channel, notice)
    except Exception as exc:
        log.warning("could not publish a change notice: %s", scrub(str(exc)))


class ChangeFeed:
    """One subscription to a change channel, delivered from a redis-py ``run_in_thread``."""

    def __init__(self) -> None:
        self._thread: Any = None

    @property
    def running(self) -> bool:
        return self._thread is not None

    def start(
        self,
        client: Any,
        channel: str,
        opener: Callable[[bytes], ChangeEvent | None],
        deliver: Callable[[ChangeEvent], None],
        scrub: Callable[[str], str],
    ) -> None:
        """Subscribe to *channel* and pass each notice to *deliver* (once: later calls do nothing).

        *opener* turns a message into a notice (None: dropped, e.g. not sealed with our
        keyring).

        After a lost connection it resubscribes by itself (notices published
        meanwhile are lost: hints).
        """
        if self._thread is not None:
            return
        pubsub = client.pubsub(ignore_subscribe_messages=True)

        def on_message(message: dict[str, Any]) -> None:
            data = message.get("data")
            event = opener(data) if isinstance(data, bytes) else None
            if event is not None:
                deliver(event)

        def on_error(exc: BaseException, ps: Any, thread: Any) -> None:
            log.warning("change feed: %s; resubscribing", scrub(str(exc)))
            time.sleep(0.5)

        pubsub.subscribe(**{channel: on_message})
        self._thread = pubsub.run_in_thread(sleep_time=0.5, daemon=True, exception_handler=on_error)

    def stop(self) -> None:
        """Stop the thread (waiting up to 2 s); errors are ignored."""
        thread, self._thread = self._thread, None
        if thread is not None:
            with contextlib.suppress(Exception):
                thread.stop()
                thread.join(2.0)
