"""A tamper-evident audit log: one sealed JSON line per security-relevant event.

Each line is the canonical JSON (sorted keys, no spaces, ASCII) of::

    {"v": 1, "seq": 7, "time": "2026-01-01T00:00:00.000Z", "event": "restore",
     "client_id": "alice", "session": "<32 hex>", "outcome": "ok", "reason": null,
     "kid": "<key id>", "prev": "<mac of line 6>", "mac": "<64 hex>"}

* ``session`` is a keyed hash of the session id, never the id itself:
  ``HMAC-SHA256(keyring.derive("audit-session-id", kid), session_id)`` as hex,
  truncated to 32 characters (128 bits). :meth:`AuditLog.session_ref` computes it
  so an operator can look up one session's events; :func:`iter_session_events`
  does so across key rotations.
* ``mac`` is ``HMAC-SHA256(keyring.derive("audit-chain", kid), DOMAIN || line
  without "mac")`` as hex; ``prev`` is the previous line's ``mac`` (64 zeros on
  line 1). Editing, deleting, reordering or forging a line breaks the chain.
* ``<log>.head`` is a small sealed file rewritten atomically after every append
  with the last ``seq`` and ``mac``; deleting lines at the tail of the log makes
  it disagree with the log.

**Anchors.** A consistent old copy of both the log and its head passes the
checks above. To catch that, :meth:`AuditLog.anchor` gives the ``(seq, mac)``
of the last line this log wrote (or found in its head), and a store that
records it (:meth:`~stuisession.stores.base.SessionStore.anchor_audit`: a file
store keeps it in every session's high-water mark, written with each
acknowledged write anyway) lets :func:`verify` check, with ``anchors``, that
the log still holds each anchored line: an anchor past the end of the log, or
a line at an anchored ``seq`` with another ``mac``, is a rollback (or a log
replaced by another). What stays undetectable is in ``docs/security.md``.

**Keys and rotation.** Every line names the key id (``kid``) it was sealed with:
the keyring's current key when it was written. After a rotation new lines use
the new key, older lines still verify as long as their key stays in the keyring
(keep retired keys for as long as logs sealed with them are kept). Session refs
therefore change at a rotation; :func:`iter_session_events` matches each line
with its own key. Removing a compromised key from the keyring makes lines
sealed with it unverifiable: archive the log first and start a new one.

**Failure policy.** :meth:`AuditLog.record` fails closed on a truncation: it
raises :class:`IntegrityError` instead of extending a chain whose head file
says lines are missing (or whose tail does not verify with no head to go by),
so a truncation is never papered over by new appends. A complete last line
that does not verify (garbage) is skipped over: the chain continues from the
head and an ``audit_gap`` line says so; :func:`verify` still reports the bad
line. After a failed append (a full disk) the next successful one is preceded
by an ``audit_gap`` line counting the events that were not recorded. Appends
are serialised across threads (a lock) and processes (``flock`` on the log
file).

Nothing secret (keys, session ids, session contents) is ever written to the log
or put in an exception message.
"""

from __future__ import annotations

import fcntl
import hmac
import os
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stuisession import _fs
from stuisession.clock import Clock, SystemClock
from stuisession.errors import IntegrityError
from stuisession.keys import Keyring
from stuisession.security._audit_format import (
    _EVENT_RE,
    _TAIL_CHUNK,
    EVENTS,
    FORMAT_VERSION,
    GENESIS,
    MAX_CLIENT_ID_LENGTH,
    MAX_LINE_BYTES,
    MAX_REASON_LENGTH,
    OUTCOMES,
    _Bad,
    _canonical,
    _check_head_against_tail,
    _head_mac,
    _head_path,
    _Identity,
    _iso,
    _line_mac,
    _parse_line,
    _read_head,
    _session_ref,
)

#: how many recent lines an :class:`AuditLog` remembers for :meth:`AuditLog.holds`
KNOWN_LINES = 8192

__all__ = [
    "EVENTS",
    "GENESIS",
    "OUTCOMES",
    "AuditLog",
    "AuditReport",
    "iter_session_events",
    "verify",
]


# -- verification ------------------------------------------------------------------------
@dataclass(frozen=True)
class AuditReport:
    """The outcome of :func:`verify`.

    ``first_bad_line`` is 1-based; for a truncated log it is the first missing
    line (one past the last line present). ``torn_tail`` is set when the log
    ends in an incomplete line left by a crash mid-append (ignored otherwise).
    """

    ok: bool
    lines: int
    last_seq: int
    first_bad_line: int | None = None
    reason: str | None = None
    torn_tail: bool = False

    def __bool__(self) -> bool:
        return self.ok


def _iter_raw_lines(path: Path) -> Iterator[tuple[bytes, bool]]:
    """Yield ``(line without newline, complete?)``; the last one may be incomplete."""
    with open(path, "rb") as fh:
        while True:
            raw = fh.readline(MAX_LINE_BYTES + 1)
            if not raw:
                return
            if raw.endswith(b"\n"):
                yield raw[:-1], True
            else:
                yield raw, False  # over-long line or an incomplete last line


def verify(
    path: str | os.PathLike[str],
    keyring: Keyring,
    *,
    require_head: bool = True,
    anchors: Iterable[tuple[int, str, str]] = (),
) -> AuditReport:
    """Check a whole audit log: every line parses and is canonical, ``seq``
    counts up by one from 1, ``prev`` links to the previous ``mac``, every
    ``mac`` verifies, and the sealed head file agrees with the last line.

    *anchors*: ``(seq, mac prefix in hex, where)`` recorded elsewhere (a
    store's :meth:`~stuisession.stores.base.SessionStore.audit_anchors`); the
    line with each ``seq`` must exist and its ``mac`` start with the prefix,
    else the log was rolled back or replaced (``reason`` names *where*).

    Streams the file (memory: the log's longest line plus the anchors). With
    ``require_head=False`` a missing head file is accepted (e.g. a log copied
    without it); a present one is still checked.
    """
    p = Path(path)
    lines = 0
    prev_mac = GENESIS
    tail: dict[str, Any] | None = None
    torn = False
    expected: dict[int, list[tuple[str, str]]] = {}
    for seq, prefix, where in anchors:
        expected.setdefault(seq, []).append((prefix, where))

    def bad(line: int, reason: str) -> AuditReport:
        return AuditReport(False, lines, 0 if tail is None else tail["seq"], line, reason, torn)

    try:
        for raw, complete in _iter_raw_lines(p):
            if not complete:
                if len(raw) > MAX_LINE_BYTES:
                    return bad(lines + 1, "line too long")
                torn = True  # a final line without newline: never acknowledged
                break
            try:
                obj = _parse_line(raw, keyring)
            except _Bad as exc:
                return bad(lines + 1, str(exc))
            if obj["seq"] != lines + 1:
                return bad(lines + 1, f"sequence number {obj['seq']}, expected {lines + 1}")
            if not hmac.compare_digest(obj["prev"], prev_mac):
                return bad(lines + 1, "prev does not link to the previous line")
            for prefix, where in expected.get(obj["seq"], ()):
                if not hmac.compare_digest(obj["mac"][: len(prefix)], prefix):
                    return bad(
                        lines + 1,
                        f"another line than the one anchored in {where}: the log was "
                        "rolled back and written again, or replaced",
                    )
            lines += 1
            prev_mac = obj["mac"]
            tail = obj
    except FileNotFoundError:
        return AuditReport(False, 0, 0, None, "log file does not exist")

    try:
        head = _read_head(p, keyring)
    except _Bad as exc:
        return bad(lines + 1, str(exc))
    if require_head and head is None and tail is None and not torn:
        # a log is created by its first line: an empty one without its head was emptied
        return bad(1, "log is empty and its head file is missing (emptied?)")
    if head is not None or require_head:
        problem = _check_head_against_tail(head, tail)
        if problem is not None:
            return bad(lines + 1, problem)
    beyond = [(seq, where) for seq, found in expected.items() if seq > lines for _, where in found]
    if beyond:
        seq, where = max(beyond)
        return bad(
            lines + 1,
            f"log rolled back: {where} records line {seq}, the log ends at line {lines} "
            f"({seq - lines} line(s) missing)",
        )
    return AuditReport(True, lines, 0 if tail is None else tail["seq"], torn_tail=torn)


def iter_session_events(
    path: str | os.PathLike[str], keyring: Keyring, session_id: str
) -> Iterator[dict[str, Any]]:
    """Yield the lines of *path* (parsed, authenticated) that concern *session_id*.

    Each line is matched with the session ref computed under its own key id, so
    lookups work across key rotations. Lines that do not verify are skipped;
    run :func:`verify` for a verdict on the whole log.
    """
    refs: dict[str, str] = {}
    for raw, complete in _iter_raw_lines(Path(path)):
        if not complete:
            continue
        try:
            obj = _parse_line(raw, keyring)
        except _Bad:
            continue
        kid = obj["kid"]
        ref = refs.get(kid)
        if ref is None:
            ref = refs[kid] = _session_ref(keyring, kid, session_id)
        if isinstance(obj["session"], str) and hmac.compare_digest(obj["session"], ref):
            yield obj


# -- writing -----------------------------------------------------------------------------
def _read_tail(fd: int, size: int) -> tuple[bytes | None, int]:
    """Return ``(last complete line or None, offset just past it)`` of the open file.

    Reads backwards in small chunks: only the end of the file is read.
    """
    end = size
    buf = b""
    pos = size
    # find the last newline: everything after it is an incomplete (torn) line
    while True:
        if pos == 0:
            return None, 0
        start = max(0, pos - _TAIL_CHUNK)
        buf = os.pread(fd, pos - start, start) + buf
        pos = start
        nl = buf.rfind(b"\n")
        if nl >= 0:
            end = pos + nl + 1
            buf = buf[:nl]
            break
        if len(buf) > 2 * MAX_LINE_BYTES:
            raise _Bad("log ends with an over-long line")
    # find the newline before it
    while True:
        nl = buf.rfind(b"\n")
        if nl >= 0:
            return buf[nl + 1 :], end
        if pos == 0:
            return buf, end
        if len(buf) > MAX_LINE_BYTES:
            raise _Bad("line too long")
        start = max(0, pos - _TAIL_CHUNK)
        buf = os.pread(fd, pos - start, start) + buf
        pos = start


class AuditLog:
    """Appends sealed events to the audit log at *path* (created with mode 0600).

    Safe to share between threads, and between processes appending to the same
    file: every append takes an exclusive ``flock`` on the log, reads its tail
    (only the last line) to continue ``seq``/``prev``, appends, and rewrites the
    head file. With ``fsync=True`` (the default) the line, the head and the
    directory are fsync'd before :meth:`record` returns.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        keyring: Keyring,
        clock: Clock | None = None,
        fsync: bool = True,
    ) -> None:
        self._path = Path(path)
        self._keyring = keyring
        self._clock: Clock = clock or SystemClock()
        self._fsync = fsync
        self._lock = threading.Lock()
        # (log identity, head identity, seq, mac) after our own last append: while
        # neither file changed, the next append need not re-read the tail
        self._cache: tuple[_Identity, _Identity | None, int, str] | None = None
        #: events that could not be written (a full disk...): recorded as a gap later
        self._lost = 0
        self._lost_reason = ""
        self._written = False
        self._garbage = ""
        #: (seq, mac) of the last line known: our last append, else the head file
        self._anchor: tuple[int, str] | None = None
        self._anchor_read = False
        #: seq -> mac of the lines this instance appended or found (the newest ones)
        self._known: OrderedDict[int, str] = OrderedDict()
        self._known_lock = threading.Lock()
        self._path.parent.mkdir(parents=True, exist_ok=True)

    @property
    def path(self) -> Path:
        """The log file."""
        return self._path

    @property
    def keyring(self) -> Keyring:
        """The keyring; its current key seals new lines."""
        return self._keyring

    @keyring.setter
    def keyring(self, keyring: Keyring) -> None:
        with self._lock:
            self._keyring = keyring
            self._cache = None

    def session_ref(self, session_id: str, key_id: str | None = None) -> str:
        """The keyed hash recorded for *session_id* under *key_id* (default: current key)."""
        ring = self._keyring
        return _session_ref(ring, key_id or ring.current_id, session_id)

    def anchor(self) -> tuple[int, str] | None:
        """``(seq, mac hex)`` of the log's last line known to this instance.

        That is the line of its last successful append, or before the first
        one the line its sealed head file names (read once); None if there is
        none or the head does not verify. Takes no lock and does no I/O after
        the first call: a store calls it on every acknowledged write
        (:meth:`~stuisession.stores.base.SessionStore.anchor_audit`).
        """
        anchor = self._anchor
        if anchor is None and not self._anchor_read:
            self._anchor_read = True
            try:
                head = _read_head(self._path, self._keyring)
            except (_Bad, OSError):
                head = None
            if head is not None and head[0] > 0 and self._anchor is None:
                self._anchor = anchor = head
                self._learn(*head)
        return anchor

    def holds(self, seq: int, mac_prefix: str) -> bool | None:
        """Whether line *seq* of the log has a ``mac`` starting with *mac_prefix*.

        Answered from the lines this instance appended or found in the head
        (the newest :data:`KNOWN_LINES`); None when *seq* is not among them
        (the log is not read). Lets a store keep an anchor the log no longer
        holds (:func:`~stuisession.stores.file.hwm.choose_anchor`).
        """
        with self._known_lock:
            mac = self._known.get(seq)
        if mac is None:
            return None
        return hmac.compare_digest(mac[: len(mac_prefix)], mac_prefix)

    def _learn(self, seq: int, mac: str) -> None:
        with self._known_lock:
            known = self._known
            known[seq] = mac
            known.move_to_end(seq)
            while len(known) > KNOWN_LINES:
                known.popitem(last=False)

    def record(
        self,
        event: str,
        *,
        client_id: str | None = None,
        session_id: str | None = None,
        outcome: str = "ok",
        reason: str | None = None,
    ) -> int:
        """Append one event and return its ``seq``.

        *event* is one of :data:`EVENTS` or another short lower-case name;
        *outcome* is ``"ok"``, ``"denied"`` or ``"error"``; *reason* is a short
        description (truncated to 200 characters) and must not contain secrets.
        *session_id* is stored only as its keyed hash.

        Raises :class:`ValueError` for a bad event or outcome,
        :class:`IntegrityError` if the existing log does not verify at its tail
        (nothing is appended then), and :class:`OSError` on I/O failure.
        """
        if not isinstance(event, str) or _EVENT_RE.fullmatch(event) is None:
            raise ValueError("event must match [a-z][a-z0-9_]{0,31}")
        if outcome not in OUTCOMES:
            raise ValueError("outcome must be one of 'ok', 'denied', 'error'")
        if reason is not None:
            reason = str(reason)[:MAX_REASON_LENGTH]
        if client_id is not None:
            client_id = str(client_id)[:MAX_CLIENT_ID_LENGTH]
        with self._lock:
            ring = self._keyring
            kid = ring.current_id
            body: dict[str, Any] = {
                "v": FORMAT_VERSION,
                "time": _iso(self._clock.now()),
                "event": event,
                "client_id": client_id,
                "session": None if session_id is None else _session_ref(ring, kid, session_id),
                "outcome": outcome,
                "reason": reason,
                "kid": kid,
            }
            try:
                if self._lost:
                    # the log resumes with a record of what it missed
                    gap = dict(
                        body,
                        event="audit_gap",
                        client_id=None,
                        session=None,
                        outcome="error",
                        reason=self._gap_reason()[:MAX_REASON_LENGTH],
                    )
                    self._append(ring, gap)
                    self._lost = 0
                seq = self._append(ring, body)
                if self._garbage:
                    # appended after a line that does not verify: say so right away
                    note = dict(
                        body,
                        event="audit_gap",
                        client_id=None,
                        session=None,
                        outcome="error",
                        reason=self._gap_reason()[:MAX_REASON_LENGTH],
                    )
                    self._garbage = ""
                    self._append(ring, note)
                return seq
            except OSError as exc:
                if not self._written:  # the line itself is missing, not just the head
                    self._lost += 1
                self._lost_reason = f"write failed ({exc.strerror or type(exc).__name__})"
                raise

    def _gap_reason(self) -> str:
        if self._lost:
            return f"{self._lost} event(s) not recorded: {self._lost_reason}"
        return f"a line that does not verify ({self._garbage}) precedes the line before"

    def _append(self, ring: Keyring, body: dict[str, Any]) -> int:
        # O_NOFOLLOW: a planted audit.log symlink is refused, so the torn-line
        # repair below can never truncate a file outside the log's directory
        fd = os.open(
            self._path,
            os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | _fs.O_NOFOLLOW,
            0o600,
        )
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            st = os.fstat(fd)
            cache = self._cache
            if cache is not None and cache[:2] == (self._identity(st), self._head_identity()):
                seq, prev = cache[2], cache[3]
            else:
                seq, prev = self._resume(fd, st.st_size, ring)
            body["seq"] = seq + 1
            body["prev"] = prev
            mac = _line_mac(ring, body["kid"], body)
            line = _canonical({**body, "mac": mac}) + b"\n"
            self._written = False
            written = os.write(fd, line)
            if written != len(line):
                raise OSError("short write to the audit log")
            if self._fsync:
                os.fsync(fd)
            self._written = True
            self._write_head(ring, seq + 1, mac)
            self._cache = (self._identity(os.fstat(fd)), self._head_identity(), seq + 1, mac)
            self._anchor = (seq + 1, mac)
            self._learn(seq + 1, mac)
            return seq + 1
        except BaseException:
            self._cache = None
            raise
        finally:
            os.close(fd)  # releases the flock

    @staticmethod
    def _identity(st: os.stat_result) -> _Identity:
        return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)

    def _head_identity(self) -> _Identity | None:
        try:
            return self._identity(os.stat(_head_path(self._path)))
        except FileNotFoundError:
            return None

    def _resume(self, fd: int, size: int, ring: Keyring) -> tuple[int, str]:
        """Read the tail (under the flock) and return the last ``(seq, mac)``."""
        try:
            raw, end = _read_tail(fd, size)
            if end < size:
                # an incomplete line from a crash mid-append: never acknowledged, drop it
                os.ftruncate(fd, end)
            head = _read_head(self._path, ring)
            try:
                tail = None if raw is None else _parse_line(raw, ring)
            except _Bad as exc:
                if head is None or head[0] == 0:
                    raise
                # garbage after the last sealed line: the head says where the chain
                # was, so new lines continue from it (verify reports the bad line)
                self._garbage = str(exc)
                return head
        except _Bad as exc:
            raise IntegrityError(f"audit log tail does not verify: {exc}") from None
        problem = _check_head_against_tail(head, tail)
        if problem is not None:
            raise IntegrityError(f"audit log does not verify: {problem}")
        if tail is None:
            return 0, GENESIS
        seq, mac = int(tail["seq"]), str(tail["mac"])
        self._learn(seq, mac)
        if head is None or head[0] != seq:
            # the head is one line behind (a crash or a failed head write after the
            # last line): bring it up to date first, or two failed head writes in a
            # row would leave it "stale" and stop the log for good
            self._write_head(ring, seq, mac)
        return seq, mac

    def _write_head(self, ring: Keyring, seq: int, mac: str) -> None:
        kid = ring.current_id
        body: dict[str, Any] = {"v": FORMAT_VERSION, "seq": seq, "last": mac, "kid": kid}
        data = _canonical({**body, "mac": _head_mac(ring, kid, body)}) + b"\n"
        _fs.atomic_write(_head_path(self._path), data, fsync=self._fsync)

    def verify(self, *, require_head: bool = True) -> AuditReport:
        """:func:`verify` this log with this log's keyring."""
        return verify(self._path, self._keyring, require_head=require_head)

    def __repr__(self) -> str:
        return f"AuditLog(path={str(self._path)!r})"
