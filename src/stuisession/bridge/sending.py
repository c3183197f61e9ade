"""The bridge's reply path: every reply leaves through :class:`ReplySender`, which charges
a handled request's reply to the queued-bytes budget (:mod:`stuisession.bridge.budget`)
and writes the one request log line.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from stuisession.bridge.budget import QueueBudget, send_tracked  # [budget hook]
from stuisession.bridge.replies import error_for, peek_fields, printable, reply_complete
from stuisession.security.identity import fingerprint

__all__ = ["ReplySender"]


class ReplySender:
    """Sends replies on the serving thread's ROUTER *sock* (never from another thread).

    :param sock: the ROUTER socket.
    :param zmq: the :mod:`zmq` module.
    :param budget: bytes held per connection and in total.
    :param log: where request lines (INFO) and send failures (WARNING) go.
    """

    def __init__(self, sock: Any, zmq: Any, budget: QueueBudget, log: logging.Logger) -> None:
        self.sock = sock
        self.zmq = zmq
        self.budget = budget
        self.log = log

    def send(
        self,
        envelope: list[bytes],
        reply: bytes,
        command: Any,
        started: float,
        identity: bytes,
        *,
        charge: bool = True,
    ) -> None:
        """Send *reply* after *envelope*; with *charge* (a handled request's) through the budget.

        *started* is the request's ``time.perf_counter()`` at arrival (for the logged
        duration). A send that fails is logged, never raised.
        """
        ident = identity.hex()
        # [budget hook] a reply over the connection's or the total bound is replaced
        # by a small Busy error; an accepted one stays charged until libzmq wrote it.
        # Refusals sent without charge are small and at most socket_hwm per peer.
        refusal = self.budget.reply(ident, len(reply)) if charge else None
        if refusal is not None:
            request_id = peek_fields(reply, ("id",)).get("id")
            reply = error_for(request_id, refusal)
        tracker = None
        try:
            if charge and refusal is None:
                tracker = send_tracked(self.sock, self.zmq, [*envelope, reply])
            else:
                self.sock.send_multipart([*envelope, reply], self.zmq.NOBLOCK)
        except self.zmq.ZMQError as exc:
            # ROUTER drops replies to vanished peers by itself; anything else is logged
            self.log.warning("could not send a reply to %s: %s", fingerprint(identity), exc)
        if charge and refusal is None:
            self.budget.sent(ident, len(reply), tracker)
        if self.log.isEnabledFor(logging.INFO):
            meta = peek_fields(reply, ("id", "status", "error_type", "error_code"), reply_complete)
            self.log.info(
                "request command=%s id=%s status=%s error_type=%s error_code=%s duration_ms=%.1f "
                "client=%s",
                printable(command),
                printable(meta.get("id")),
                printable(meta.get("status")),
                printable(meta.get("error_type")),
                printable(meta.get("error_code")),
                (time.perf_counter() - started) * 1000.0,
                fingerprint(identity),  # routing identities are never shown or logged
            )
