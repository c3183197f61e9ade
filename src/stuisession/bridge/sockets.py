"""The bridge's sockets: the ROUTER it serves on (limits, CURVE), the wake-up pair its
workers nudge the serving thread through, the change-notice publisher, and reading one
message with its authenticated caller.

Each opener closes what it opened when it fails part-way, so a constructor that calls
several of them only has to clean up the ones that returned.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from stuisession.bridge.curve import NOBODY, CurveConfig, caller_from_frame, is_loopback_endpoint
from stuisession.bridge.notify import Notifier
from stuisession.security.identity import Caller

if TYPE_CHECKING:
    from stuisession.policy import Policy
    from stuisession.service.core import SessionService

__all__ = ["open_notifier", "open_router", "open_wake_pair", "receive", "zmq_module"]


def zmq_module() -> Any:
    """The :mod:`zmq` module (raises :class:`ImportError` with an install hint without pyzmq)."""
    try:
        import zmq
    except ImportError as exc:
        raise ImportError("the ZeroMQ bridge needs pyzmq: pip install 'stuisession[zmq]'") from exc
    return zmq


def open_router(
    context: Any,
    zmq: Any,
    bind: str,
    policy: Policy,
    *,
    curve: CurveConfig | None,
    log: logging.Logger,
) -> tuple[Any, str, Any]:
    """Bind the serving ROUTER socket: ``(socket, bound endpoint, ZAP authenticator or None)``.

    Raises :class:`zmq.ZMQError` for a bad or busy address, having closed the socket and
    stopped the authenticator.
    """
    sock = context.socket(zmq.ROUTER)
    authenticator: Any = None
    try:
        # replies still queued at shutdown get a moment to leave, not forever
        sock.setsockopt(zmq.LINGER, 500)
        # a peer sending far more than the handler accepts is cut off instead of
        # buffered; up to this size it gets a structured MessageTooLarge reply
        sock.setsockopt(zmq.MAXMSGSIZE, 2 * policy.max_message_size + 65536)
        # [limits hook] complete messages queued per peer, each way (ROUTER drops
        # replies to a peer whose queue is full); see docs/security.md "Limits"
        sock.setsockopt(zmq.SNDHWM, policy.socket_hwm)
        sock.setsockopt(zmq.RCVHWM, policy.socket_hwm)
        # no ROUTER_HANDOVER: a peer presenting a routing identity that is in use
        # must not take over the connection (and its in-flight replies); libzmq
        # ignores such a newcomer until the old connection is gone
        if curve is not None:
            authenticator = curve.start_authenticator(context)
            curve.apply(sock)
        # [budget hook] reply bodies go zero-copy and tracked, however small, so
        # the budget sees every byte libzmq still holds
        sock.copy_threshold = 0
        if "[" in bind:
            sock.setsockopt(zmq.IPV6, 1)
        sock.bind(bind)
        endpoint: str = sock.getsockopt_string(zmq.LAST_ENDPOINT)
    except BaseException:
        sock.close()
        if authenticator is not None:
            authenticator.stop()
        raise
    if curve is None and not is_loopback_endpoint(endpoint):
        log.warning(
            "SECURITY WARNING: serving PLAINTEXT on %s, beyond loopback: anyone "
            "who can reach it can send requests, and session ids and tokens "
            "cross the network in clear. Use --curve-secret/--curve-clients.",
            endpoint,
        )
    return sock, endpoint, authenticator


def open_wake_pair(context: Any, zmq: Any, endpoint: str) -> tuple[Any, Any]:
    """``(pull, push)`` on an inproc *endpoint*: workers nudge the serving thread via *push*."""
    pull = context.socket(zmq.PULL)
    try:
        pull.setsockopt(zmq.LINGER, 0)
        pull.bind(endpoint)
        push = context.socket(zmq.PUSH)
        try:
            push.setsockopt(zmq.LINGER, 0)
            push.connect(endpoint)
        except BaseException:
            push.close()
            raise
    except BaseException:
        pull.close()
        raise
    return pull, push


def open_notifier(
    service: SessionService,
    notify: str | None,
    context: Any,
    curve: CurveConfig | None,
    identity_client: Callable[[str], str | frozenset[str] | None] | None,
) -> Notifier | None:
    """The change-notice publisher on *notify* (None: no notices).

    On a CURVE bridge without an *identity_client*, a subscriber's key maps to the
    client ids it is bound to in the allow-list.
    """
    if notify is None:
        return None
    if curve is not None and identity_client is None:
        identity_client = _bound_client_ids(curve)
    return Notifier(
        service,
        notify,
        context,
        identity_client=identity_client,
        # subscribers authenticate like requesters: same key pair, same ZAP
        setup=None if curve is None else curve.apply,
    )


#: a last frame larger than this is kept zero-copy (a ``memoryview`` of libzmq's buffer)
ZERO_COPY_BYTES = 64 * 1024


def receive(
    sock: Any, zmq: Any, curve: CurveConfig | None, *, forwarded: bool = False
) -> tuple[list[bytes | memoryview], Caller]:
    """One message and who sent it (raises ``zmq.Again`` when there is none).

    The frames are ``bytes``, except a last frame over :data:`ZERO_COPY_BYTES`: that is
    a ``memoryview`` of the received message, never copied by the serving thread (a
    copy of several MB holds the GIL while every page of it is faulted in; issue 17).
    Its size is known before anything reads it; the handler checks it in chunks.

    *forwarded*: a worker behind a CURVE supervisor, whose first frame is the
    caller the parent authenticated (:func:`~stuisession.bridge.curve.caller_frame`);
    it is removed from the frames returned.
    """
    parts = sock.recv_multipart(zmq.NOBLOCK, copy=False)
    relayed: Caller | None = None
    if forwarded:
        relayed = caller_from_frame(parts[0].bytes) if len(parts) > 1 else NOBODY
        parts = parts[1:] if len(parts) > 1 else parts
    frames: list[bytes | memoryview] = [p.bytes for p in parts[:-1]]
    last = parts[-1]
    frames.append(last.buffer if len(last) > ZERO_COPY_BYTES else last.bytes)
    if relayed is not None:
        return frames, relayed
    if curve is None:
        return frames, Caller.connection(bytes(frames[0]))
    return frames, curve.message_caller(last)


def _bound_client_ids(curve: CurveConfig) -> Callable[[str], frozenset[str] | None]:
    """Map a CURVE ``User-Id`` to the client ids its key is bound to (for subscriptions)."""

    def bound(user_id: str) -> frozenset[str] | None:
        binding = curve.allow_list.lookup(user_id)
        return None if binding is None else binding.client_ids

    return bound
