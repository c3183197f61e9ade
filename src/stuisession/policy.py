"""Session policy: timeouts, limits and sizes. Defaults are upstream STUI's.

Defaults per role: an embedded ``Policy()`` (a ``ProtocolHandler`` in a test
harness or tool) has no rate limit; ``stuisession serve`` starts from
:data:`SERVE_DEFAULTS`, which turn it on.
"""

from __future__ import annotations

from typing import Any

import attrs

from stuisession.errors import ConfigurationError

MB = 1024 * 1024
DAY = 86_400


def _positive(inst: Any, attribute: attrs.Attribute[Any], value: int | float) -> None:
    if value <= 0:
        raise ConfigurationError(f"{attribute.name} must be positive, got {value!r}")


def _optional_positive(inst: Any, attribute: attrs.Attribute[Any], value: float | None) -> None:
    if value is not None and value <= 0:
        raise ConfigurationError(f"{attribute.name} must be positive or None, got {value!r}")


def _optional_share(inst: Any, attribute: attrs.Attribute[Any], value: float | None) -> None:
    if value is not None and not 0 < value <= 1:
        raise ConfigurationError(f"{attribute.name} must be in (0, 1] or None, got {value!r}")


def default_touch_granularity(session_timeout: int) -> int:
    """How often access times are persisted for *session_timeout*: timeout/4, 1..60 s."""
    return max(1, min(60, session_timeout // 4))


def _client_set(value: Any) -> frozenset[str] | None:
    return None if value is None else frozenset(value)


@attrs.frozen(kw_only=True)
class Policy:
    """What the session service allows. Immutable; build a new one to change it.

    All durations are in seconds, sizes in bytes.
    """

    #: idle timeout: a session not used for this long expires (upstream ``timeout``)
    session_timeout: int = attrs.field(default=3600, validator=_positive)
    #: hard cap on a session's life since creation, whatever its activity (None: none).
    #: Default 7 days: OWASP's Session Management Cheat Sheet and ASVS 5.0 V7
    #: ask for an absolute timeout set by risk; a development session resumed
    #: across a working week is the use case (docs/security.md, "Lifetimes")
    absolute_lifetime: int | None = attrs.field(default=7 * DAY, validator=_optional_positive)
    #: active sessions one client may hold (upstream default 5)
    max_sessions_per_client: int = attrs.field(default=5, validator=_positive)
    #: how often the server sweeps expired sessions (upstream ``cleanup_interval``)
    cleanup_interval: int = attrs.field(default=300, validator=_positive)
    #: sessions idle for longer than this are deleted by the sweep whatever their timeout
    retention: int = attrs.field(default=30 * DAY, validator=_positive)
    #: largest accepted request message (upstream: 10 MB)
    max_message_size: int = attrs.field(default=10 * MB, validator=_positive)
    #: largest sealed snapshot of one session (the seed's 1 MB per session file)
    max_snapshot_size: int = attrs.field(default=1 * MB, validator=_positive)
    #: access times are persisted at most this often (restores stay read-only otherwise);
    #: default: a quarter of the idle timeout, at most 60 s. A value above half the
    #: idle timeout is refused: the stored access time may lag by up to this much,
    #: so a session used every few seconds could expire (see ``docs/guarantees.md``)
    touch_granularity: int = attrs.field(
        default=attrs.Factory(lambda self: default_touch_granularity(self.session_timeout), True),
        validator=_positive,
    )
    #: if set, only these client ids may create sessions
    allow_clients: frozenset[str] | None = attrs.field(default=None, converter=_client_set)
    #: client ids that may never create or use sessions
    deny_clients: frozenset[str] = attrs.field(default=frozenset(), converter=frozenset)
    #: longest accepted request ``id``
    max_request_id_length: int = attrs.field(default=256, validator=_positive)
    #: compare-and-swap retries of one update before reporting a conflict
    max_update_retries: int = attrs.field(default=32, validator=_positive)
    #: "compat": the 256-bit session id is the bearer secret (upstream clients);
    #: "strict": requests must also present the resume token issued with the session
    auth_mode: str = attrs.field(
        default="compat", validator=attrs.validators.in_(("compat", "strict"))
    )
    #: give a restored session a new id (fixation protection); None: on in strict mode only
    rotate_on_restore: bool | None = None
    #: resume/client tokens older than this are refused (None: valid while the session is)
    #: default 24 h; a restore in strict mode hands out fresh tokens
    token_ttl: int | None = attrs.field(default=DAY, validator=_optional_positive)
    #: sustained requests per second per client (token bucket); None (the embedded
    #: default) disables the limit; ``stuisession serve`` uses 100 (SERVE_DEFAULTS)
    rate_limit: float | None = attrs.field(default=None, validator=_optional_positive)
    #: requests a client may burst above the sustained rate
    rate_burst: int = attrs.field(default=200, validator=_positive)
    #: sessions examined per step of the expiry sweep (bounds the time of one step)
    sweep_batch: int = attrs.field(default=500, validator=_positive)
    #: also audit every successful state update (a durable audit write each); off,
    #: accesses (create, restore, close), denials and failures are still recorded
    audit_updates: bool = False

    #: the expiry sweep refuses to delete when the clock is this far (seconds) ahead
    #: of the newest activity in the store or jumped this far since the last sweep
    max_clock_skew: int = attrs.field(default=300, validator=_positive)

    # -- bounds under hostile input (docs/security.md, "Limits") ---------------------
    #: longest integer literal accepted in a request, in decimal digits (parsing cost
    #: grows quadratically with the digit count; Python's own bound, 4300, is too high)
    max_int_digits: int = attrs.field(default=640, validator=_positive)
    #: most members one JSON object of a request may have
    max_object_keys: int = attrs.field(default=100_000, validator=_positive)
    #: most JSON values (objects, arrays, scalars) one request may hold
    max_json_nodes: int = attrs.field(default=1_000_000, validator=_positive)
    #: largest session state, as decoded JSON bytes (None: only the snapshot limit applies)
    max_state_bytes: int | None = attrs.field(default=16 * MB, validator=_optional_positive)
    #: largest reply the bridge builds; a larger one is refused (e.g. a huge restore)
    max_reply_bytes: int = attrs.field(default=32 * MB, validator=_positive)
    #: bytes of replies one connection may have waiting to be sent before it is dropped
    max_queued_bytes_per_connection: int = attrs.field(default=64 * MB, validator=_positive)
    #: bytes of replies all connections together may have waiting to be sent
    max_queued_bytes: int = attrs.field(default=256 * MB, validator=_positive)
    #: bytes per second of large requests (over 8 KiB) one bridge starts handling;
    #: more wait their turn (``bridge/pacing.py``; None: unpaced)
    large_request_rate: float | None = attrs.field(default=64 * MB, validator=_optional_positive)
    #: fraction (0, 1] of wall time one bridge spends handling large requests; more
    #: wait their turn (``bridge/pacing.py``; None: unbounded)
    large_request_share: float | None = attrs.field(default=0.25, validator=_optional_share)
    #: complete messages queued per connection in ZeroMQ (send and receive high-water marks)
    socket_hwm: int = attrs.field(default=1000, validator=_positive)
    #: sessions the store may hold in total (None: no cap)
    max_sessions_total: int | None = attrs.field(default=100_000, validator=_optional_positive)
    #: sessions created per second across all clients (None: no cap)
    max_creates_per_second: float | None = attrs.field(default=50.0, validator=_optional_positive)
    #: bytes the store may use on disk before creates are refused (None: no cap)
    max_store_bytes: int | None = attrs.field(default=None, validator=_optional_positive)
    #: refusals (denials, rate limits, caps) are audited as one summary line per
    #: (client, event, reason) per interval of this many seconds
    audit_interval: float = attrs.field(default=60.0, validator=_positive)

    def __attrs_post_init__(self) -> None:
        if self.session_timeout > self.retention:
            raise ConfigurationError("session_timeout must not exceed retention")
        if 2 * self.touch_granularity > self.session_timeout:
            # a session whose access time was recorded touch_granularity ago and
            # that is used at half its timeout would be expired by the next use
            raise ConfigurationError(
                f"touch_granularity ({self.touch_granularity} s) must be at most half of "
                f"session_timeout ({self.session_timeout} s), or sessions in use could expire"
            )

    @property
    def strict(self) -> bool:
        """True in strict authentication mode."""
        return self.auth_mode == "strict"

    @property
    def rotates_on_restore(self) -> bool:
        """Whether a restore gives the session a new id."""
        return self.strict if self.rotate_on_restore is None else self.rotate_on_restore

    def client_allowed(self, client_id: str) -> bool:
        """True unless the client is deny-listed or missing from a set allow-list."""
        if client_id in self.deny_clients:
            return False
        return self.allow_clients is None or client_id in self.allow_clients


#: what ``stuisession serve`` changes from ``Policy()`` before its ``--config`` file,
#: the environment and its options apply: a served bridge faces many clients, so
#: each gets a token bucket of 100 requests/s with a burst of 200
SERVE_DEFAULTS: dict[str, Any] = {"rate_limit": 100.0, "rate_burst": 200}
__all__ = ["DAY", "MB", "SERVE_DEFAULTS", "Policy"]
