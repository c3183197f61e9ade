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

    "STHW" u8 version (1) u8 key-id length, key id (64 bytes, zero padded),
    u64 revision, HMAC-SHA256 (32 bytes), zero padding to 128 bytes

The HMAC is ``HMAC(keyring.derive("file-store-hwm", key id), "STHW-slot" ||
session id || slot bytes before the MAC)``: a mark can not be forged, edited
or moved to another session without the keys.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import struct

import attrs

from stuisession import _fs
from stuisession.keys import Keyring

MAGIC = b"STHW"
VERSION = 1
SLOT_SIZE = 128
FILE_SIZE = 2 * SLOT_SIZE
_KID_FIELD = 64
_BODY = struct.Struct(f">4sBB{_KID_FIELD}sQ")
_MAC_SIZE = 32
_PURPOSE = "file-store-hwm"
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


def _mac(ring: Keyring, key_id: str, session_id: str, body: bytes) -> bytes:
    key = ring.derive(_PURPOSE, key_id)
    return hmac.new(key, _DOMAIN + session_id.encode("ascii") + body, hashlib.sha256).digest()


def encode_slot(ring: Keyring, session_id: str, revision: int) -> bytes:
    """One sealed slot holding *revision*."""
    kid = ring.current_id.encode("ascii")
    body = _BODY.pack(MAGIC, VERSION, len(kid), kid, revision)
    slot = body + _mac(ring, ring.current_id, session_id, body)
    return slot + bytes(SLOT_SIZE - len(slot))


def _open_slot(ring: Keyring, session_id: str, slot: bytes) -> int | None:
    if len(slot) < SLOT_SIZE:
        return None
    body = slot[: _BODY.size]
    magic, version, klen, kid_field, revision = _BODY.unpack(body)
    if magic != MAGIC or version != VERSION or not 1 <= klen <= _KID_FIELD:
        return None
    if kid_field[klen:] != bytes(_KID_FIELD - klen) or any(slot[_BODY.size + _MAC_SIZE :]):
        return None
    try:
        key_id = kid_field[:klen].decode("ascii")
    except UnicodeDecodeError:
        return None
    if key_id not in ring:
        return None
    mac = slot[_BODY.size : _BODY.size + _MAC_SIZE]
    if not hmac.compare_digest(_mac(ring, key_id, session_id, body), mac):
        return None
    return int(revision)


def parse(ring: Keyring, session_id: str, data: bytes | None) -> Mark:
    """The mark in *data* (the file's bytes; None: no file)."""
    if data is None:
        return Mark(None, (), present=False)
    best: int | None = None
    damaged: list[int] = []
    for i in range(2):
        slot = data[i * SLOT_SIZE : (i + 1) * SLOT_SIZE]
        revision = _open_slot(ring, session_id, slot)
        if revision is None:
            if len(slot) != SLOT_SIZE or any(slot):
                damaged.append(i)
            continue
        best = revision if best is None else max(best, revision)
    if len(data) != FILE_SIZE and not damaged:
        damaged.append(2)  # trailing bytes
    return Mark(best, tuple(damaged))


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
) -> bool:
    """Record *revision* durably; return True if the file was created.

    The slot ``revision % 2`` is overwritten in place and synced. With
    *lower* (a recovery accepted an older state), the other slot is
    overwritten too, afterwards, so the mark really goes down.
    """
    slot = encode_slot(ring, session_id, revision)
    fd = fs.open(path, os.O_RDWR | os.O_CREAT)
    try:
        size = os.fstat(fd).st_size
        created = size == 0
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
