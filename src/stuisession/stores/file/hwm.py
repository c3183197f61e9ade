"""Per-session high-water marks: the acknowledged revision, kept apart from the state.

``<id>.hwm`` holds the highest revision of the session that the store has
acknowledged. It is written durably *after* the change is durable in the
snapshot or journal and *before* the write returns, so on every later read:

* a state whose revision is below the mark went backwards (a cut or deleted
  journal, an old snapshot or backup copied over the current one, a damaged
  acknowledged record): an integrity failure, never a silent rollback;
* anything after the valid prefix of a journal that already reaches the mark
  was never acknowledged (a torn append), and is safely ignored.

Layout: two fixed 128-byte slots; revision *r* is written into slot ``r % 2``
in place, then ``fdatasync``. A torn slot write can therefore only damage the
slot being written, never the one holding the previous mark. Each slot::

    "STHW" u8 version (2) u8 key-id length, key id (64 bytes, zero padded),
    u64 revision, u64 audit seq, audit mac (8 bytes),
    HMAC-SHA256 (32 bytes), zero padding to 128 bytes

Version 1 slots (no audit fields) are still read. The audit fields are the
*audit anchor*: the ``seq`` and the first 8 bytes of the ``mac`` of the audit
log's last line known to the writer when the mark was written (zero: no
audit log). ``stuisession audit verify`` checks that the log still holds that
line, so putting back an old copy of the audit log and its head file is
detected unless an old copy of every mark written since is put back too (see
``docs/security.md``). Writing the anchor costs no extra write: it rides on
the mark that every acknowledged write records anyway (one ``pread`` of the
mark first, so that an anchor never goes backwards: :func:`choose_anchor`).

The HMAC is ``HMAC(keyring.derive("file-store-hwm", key id), "STHW-slot" ||
session id || slot bytes before the MAC)``: a mark can not be forged, edited
or moved to another session without the keys.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import os
import struct

import attrs

from stuisession import _fs
from stuisession.keys import Keyring
from stuisession.stores.base import AuditAnchorSource

MAGIC = b"STHW"
VERSION = 2
SLOT_SIZE = 128
FILE_SIZE = 2 * SLOT_SIZE
_KID_FIELD = 64
_BODY_V1 = struct.Struct(f">4sBB{_KID_FIELD}sQ")
_ANCHOR = struct.Struct(">Q8s")
_BODY = struct.Struct(f">4sBB{_KID_FIELD}sQQ8s")
_MAC_SIZE = 32
#: hex digits of the audit line's mac kept in an anchor (8 bytes)
ANCHOR_MAC_HEX = 16
_PURPOSE = "file-store-hwm"
_HEX = frozenset("0123456789abcdef")

log = logging.getLogger("stuisession.stores.file")

#: the audit log, as a mark sees it
AnchorSource = AuditAnchorSource
_DOMAIN = b"STHW-slot"


@attrs.frozen
class Mark:
    """What a high-water-mark file says.

    ``revision`` is the highest valid slot's revision (None: no valid slot);
    ``damaged`` lists slots that are neither valid nor blank (all zero).
    """

    revision: int | None
    damaged: tuple[int, ...] = ()
    #: the file exists
    present: bool = True
    #: the newest audit anchor of the valid slots: ``(seq, first 16 hex digits of
    #: the line's mac)``; None: none recorded
    audit: tuple[int, str] | None = None


def _mac(ring: Keyring, key_id: str, session_id: str, body: bytes) -> bytes:
    key = ring.derive(_PURPOSE, key_id)
    return hmac.new(key, _DOMAIN + session_id.encode("ascii") + body, hashlib.sha256).digest()


def encode_slot(
    ring: Keyring, session_id: str, revision: int, anchor: tuple[int, str] | None = None
) -> bytes:
    """One sealed slot holding *revision* and the audit *anchor* ``(seq, mac hex)``."""
    kid = ring.current_id.encode("ascii")
    seq, mac = (0, bytes(8)) if anchor is None else (anchor[0], bytes.fromhex(anchor[1][:16]))
    body = _BODY.pack(MAGIC, VERSION, len(kid), kid, revision, seq, mac)
    slot = body + _mac(ring, ring.current_id, session_id, body)
    return slot + bytes(SLOT_SIZE - len(slot))


def _checked(anchor: object) -> tuple[int, str] | None:
    if not isinstance(anchor, tuple) or len(anchor) != 2:
        return None
    seq, mac = anchor
    if type(seq) is not int or not 0 < seq < 2**64:
        return None
    if not isinstance(mac, str) or len(mac) < ANCHOR_MAC_HEX or not _HEX.issuperset(mac):
        return None
    return seq, mac[:ANCHOR_MAC_HEX]


def choose_anchor(
    old: tuple[int, str] | None, source: AnchorSource | None, where: str
) -> tuple[int, str] | None:
    """The anchor a new mark records: *source*'s, unless that would lose *old*.

    An anchor never moves to a line that is not shown to follow the old one:
    *old* is kept when the log's position is below it (another process
    appended further, or the log was rolled back) or when *source* knows that
    the line *old* names is not in the log (rolled back and written again;
    logged as an ERROR). Never raises: a failing audit log must not fail the
    session write that records the mark.
    """
    if source is None:
        return old
    try:
        new = _checked(source.anchor())
        if new is None or old is None:
            return new or old
        if new[0] < old[0]:
            return old
        if new == old:
            return new
        holds = source.holds(*old)
    except Exception:  # the audit log's problem; audit verify reports it
        log.warning("file store: the audit anchor could not be read", exc_info=True)
        return old
    if holds is False or new[0] == old[0]:
        log.error(
            "file store: the audit log no longer holds line %d anchored in a session's "
            "high-water mark (%s): was it rolled back or replaced? The mark keeps it; "
            "run `stuisession audit verify`",
            old[0],
            where,
        )
        return old
    return new


def _open_slot(
    ring: Keyring, session_id: str, slot: bytes
) -> tuple[int, tuple[int, str] | None] | None:
    """``(revision, audit anchor or None)`` of a valid slot, else None."""
    if len(slot) < SLOT_SIZE:
        return None
    version = slot[4]
    size = _BODY.size if version == VERSION else _BODY_V1.size
    body = slot[:size]
    magic, _, klen, kid_field, revision = _BODY_V1.unpack(body[: _BODY_V1.size])
    if magic != MAGIC or version not in {1, VERSION} or not 1 <= klen <= _KID_FIELD:
        return None
    if kid_field[klen:] != bytes(_KID_FIELD - klen) or any(slot[size + _MAC_SIZE :]):
        return None
    try:
        key_id = kid_field[:klen].decode("ascii")
    except UnicodeDecodeError:
        return None
    if key_id not in ring:
        return None
    mac = slot[size : size + _MAC_SIZE]
    if not hmac.compare_digest(_mac(ring, key_id, session_id, body), mac):
        return None
    anchor = None
    if version == VERSION:
        seq, line_mac = _ANCHOR.unpack(body[_BODY_V1.size :])
        anchor = (int(seq), line_mac.hex()) if seq else None
    return int(revision), anchor


def parse(ring: Keyring, session_id: str, data: bytes | None) -> Mark:
    """The mark in *data* (the file's bytes; None: no file)."""
    if data is None:
        return Mark(None, (), present=False)
    best: int | None = None
    audit: tuple[int, str] | None = None
    damaged: list[int] = []
    for i in range(2):
        slot = data[i * SLOT_SIZE : (i + 1) * SLOT_SIZE]
        opened = _open_slot(ring, session_id, slot)
        if opened is None:
            if len(slot) != SLOT_SIZE or any(slot):
                damaged.append(i)
            continue
        revision, anchor = opened
        best = revision if best is None else max(best, revision)
        if anchor is not None and (audit is None or anchor[0] > audit[0]):
            audit = anchor
    if len(data) != FILE_SIZE and not damaged:
        damaged.append(2)  # trailing bytes
    return Mark(best, tuple(damaged), audit=audit)


def read(ring: Keyring, session_id: str, path: str, *, fs: _fs.Beneath) -> Mark:
    """The mark of *path* (never follows a symlink; OSError other than ENOENT raised)."""
    return parse(ring, session_id, fs.read(path))


def write(
    ring: Keyring,
    session_id: str,
    path: str,
    revision: int,
    *,
    fsync: bool,
    fs: _fs.Beneath,
    lower: bool = False,
    anchor: AnchorSource | None = None,
) -> bool:
    """Record *revision* (and an audit anchor) durably; True if the file was created.

    The slot ``revision % 2`` is overwritten in place and synced. With
    *lower* (a recovery accepted an older state), the other slot is
    overwritten too, afterwards, so the mark really goes down. The anchor is
    :func:`choose_anchor` of the one the file holds and *anchor*'s.
    """
    fd = fs.open(path, os.O_RDWR | os.O_CREAT)
    try:
        size = os.fstat(fd).st_size
        created = size == 0
        old = parse(ring, session_id, os.pread(fd, FILE_SIZE, 0)).audit if size else None
        slot = encode_slot(ring, session_id, revision, choose_anchor(old, anchor, path))
        if size != FILE_SIZE:
            # a new (or truncated/garbled-length) file: lay out both slots first
            os.ftruncate(fd, 0)
            other = bytes(SLOT_SIZE)
            layout = [other, other]
            layout[revision % 2] = slot
            _fs.write_all(fd, b"".join(layout))
        else:
            offset = (revision % 2) * SLOT_SIZE
            before = os.pread(fd, SLOT_SIZE, offset)
            os.pwrite(fd, slot, offset)
            if fsync:
                try:
                    os.fdatasync(fd)
                except OSError:
                    # not acknowledged: the mark must not run ahead of the data
                    with contextlib.suppress(OSError):
                        os.pwrite(fd, before, offset)
                    raise
        if created and fsync:
            os.fdatasync(fd)
        if lower:
            os.pwrite(fd, slot, ((revision + 1) % 2) * SLOT_SIZE)
            if fsync:
                os.fdatasync(fd)
        return created
    finally:
        os.close(fd)


def remove(path: str) -> None:
    """Delete a mark (the session is being deleted)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
