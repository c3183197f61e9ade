"""Journal records: sealed deltas appended after a snapshot.

A journal extends one snapshot (its *base*) with the changes committed since,
so an update costs what the change costs, not what the session costs. The
format (see ``docs/format.md``)::

    journal  := header record*
    header   := "STJH" u8 version, 3 zero bytes, base_tag (32 bytes)
    record   := u32 n, body (n bytes), u32 n
    body     := "STJR" u8 version, u8 kind, u8 flags, u8 key-id length,
                key_id, u32 meta length, meta, payload, tag (32 bytes)

``base_tag`` is the final tag of the snapshot the journal extends: a journal
left behind by a crash during compaction names the old snapshot and is
ignored. ``meta`` is the session record after the change (plain JSON, as in a
snapshot head); ``payload`` is the change itself (kind ``UPDATE``: the
:class:`~stuisession.updates.StateUpdate` as JSON, zstd-compressed when large,
AES-256-GCM-sealed when the codec encrypts), empty for kind ``INFO`` (a new
record only, e.g. an access time). Each tag is
``HMAC(key, "STJR-rec" || base_tag || previous tag || body before the tag)``:
records are chained to their base and to each other, so none can be dropped
from the middle, reordered or moved to another session unnoticed. The length
at both ends lets a reader find the last record from the end of the file.

A record that stops short of the end of the file was being appended when its
writer died (appends are acknowledged only after ``fdatasync``): readers
ignore it and the next writer cuts it off. A complete record that fails its
check raises :class:`~stuisession.errors.IntegrityError`.

Like :mod:`stuisession.codec`, this module knows nothing of files.
"""

from __future__ import annotations

import hmac
import struct
from typing import Any

import attrs

from stuisession import _json
from stuisession.codec import _envelope
from stuisession.codec._envelope import TAG_SIZE
from stuisession.codec.snapshot import SnapshotCodec
from stuisession.errors import IntegrityError
from stuisession.state.forms import structure_info, unstructure_info
from stuisession.state.model import Session, SessionInfo
from stuisession.state.updates import StateUpdate

HEADER_MAGIC = b"STJH"
RECORD_MAGIC = b"STJR"
VERSION = 1
HEADER = struct.Struct(">4sB3x32s")
HEADER_SIZE = HEADER.size  # 40
_LEN = struct.Struct(">I")
_BODY_HEAD = struct.Struct(">4sBBBB")
KIND_UPDATE = 1
KIND_INFO = 2
_FLAG_ZSTD = 0x01
_FLAG_ENCRYPTED = 0x02
_KINDS = (KIND_UPDATE, KIND_INFO)
_TAG_DOMAIN = b"STJR-rec"
_AAD_DOMAIN = b"STJR-aad"
#: payloads at least this large are compressed
_COMPRESS_FROM = 512
#: no record may claim more than this (a damaged length must not allocate gigabytes)
MAX_RECORD_SIZE = 256 * 1024 * 1024


@attrs.frozen
class JournalRecord:
    """One verified record."""

    kind: int
    info: SessionInfo
    #: the change as JSON (kind ``UPDATE``), decrypted and decompressed
    payload: bytes
    tag: bytes
    #: offset just past this record in the journal
    end: int


def replay(session: Session, records: list[JournalRecord]) -> Session:
    """*session* with the journal *records* applied in order.

    :class:`IntegrityError` if a record does not apply (a sealed record that
    fails to replay means a writer bug).
    """
    for r in records:
        state = session.state
        if r.kind == KIND_UPDATE:
            try:
                state = StateUpdate.from_json(r.payload, checked=True).apply(state, r.info.revision)
            except Exception as exc:
                raise IntegrityError(
                    f"journal record for revision {r.info.revision} could not be replayed "
                    f"({type(exc).__name__})"
                ) from None
        session = Session.from_info(r.info, state)
    return session


def snapshot_tag(blob: bytes) -> bytes:
    """The final tag of a sealed snapshot: what a journal's records are bound to."""
    return blob[-TAG_SIZE:]


def header(base_tag: bytes) -> bytes:
    """A journal header for a journal extending the snapshot with final tag *base_tag*."""
    return HEADER.pack(HEADER_MAGIC, VERSION, base_tag)


def base_of(data: bytes) -> bytes | None:
    """The base tag named by a journal's header, or None if there is no valid header."""
    if len(data) < HEADER_SIZE:
        return None
    magic, version, base = HEADER.unpack_from(data)
    if magic != HEADER_MAGIC or version != VERSION:
        return None
    return bytes(base)


def seal(
    codec: SnapshotCodec,
    info: SessionInfo,
    *,
    kind: int,
    base_tag: bytes,
    prev_tag: bytes,
    payload: bytes = b"",
) -> bytes:
    """One framed record carrying *info* and *payload*, chained after *prev_tag*."""
    key_id = codec.keyring.current_id
    kid = key_id.encode("ascii")
    flags = 0
    if payload and len(payload) >= _COMPRESS_FROM:
        payload = _envelope.compress(payload)
        flags |= _FLAG_ZSTD
    if payload and codec.encrypt:
        flags |= _FLAG_ENCRYPTED
        aad = _aad(info.session_id, base_tag, prev_tag, kind, flags, key_id)
        payload = _envelope.encrypt(codec.keyring.enc_key(key_id), payload, aad)
    meta = _json.dumps(unstructure_info(info))
    body = b"".join(
        (
            _BODY_HEAD.pack(RECORD_MAGIC, VERSION, kind, flags, len(kid)),
            kid,
            _LEN.pack(len(meta)),
            meta,
            payload,
        )
    )
    tag = _tag(codec.keyring.mac_key(key_id), base_tag, prev_tag, body)
    n = _LEN.pack(len(body) + TAG_SIZE)
    return b"".join((n, body, tag, n))


def _tag(mac_key: bytes, base_tag: bytes, prev_tag: bytes, body: bytes) -> bytes:
    return _envelope.mac(mac_key, _TAG_DOMAIN, base_tag, prev_tag, body)


def _aad(  # noqa: PLR0917 - a fixed list of what the ciphertext is bound to
    session_id: str, base_tag: bytes, prev_tag: bytes, kind: int, flags: int, key_id: str
) -> bytes:
    return b"|".join(
        (_AAD_DOMAIN, bytes((VERSION, kind, flags)), key_id.encode(), session_id.encode())
    ) + (base_tag + prev_tag)


def open_records(
    codec: SnapshotCodec,
    data: bytes | memoryview,
    *,
    start: int,
    base_tag: bytes,
    prev_tag: bytes,
    session_id: str,
) -> list[JournalRecord]:
    """Verify and decode the records of *data* from offset *start*.

    *prev_tag* is the tag before *start* (the base tag at the first record).
    An incomplete record at the very end is ignored (its append was never
    acknowledged); any other damage raises :class:`IntegrityError`.
    """
    view = memoryview(data)
    out: list[JournalRecord] = []
    pos = start
    end = len(view)
    while pos < end:
        if end - pos < _LEN.size:
            break  # a torn length prefix
        (n,) = _LEN.unpack_from(view, pos)
        if n > MAX_RECORD_SIZE or n < _BODY_HEAD.size + TAG_SIZE:
            raise IntegrityError("journal record has an implausible length")
        stop = pos + _LEN.size + n + _LEN.size
        if stop > end:
            break  # torn: the append did not complete
        (trailer,) = _LEN.unpack_from(view, stop - _LEN.size)
        if trailer != n:
            raise IntegrityError("journal record is damaged (its two lengths differ)")
        body = bytes(view[pos + _LEN.size : stop - _LEN.size - TAG_SIZE])
        tag = bytes(view[stop - _LEN.size - TAG_SIZE : stop - _LEN.size])
        record = _open_one(codec, body, tag, base_tag, prev_tag, session_id, stop)
        out.append(record)
        prev_tag = tag
        pos = stop
    return out


def open_journal(
    codec: SnapshotCodec, data: bytes, *, base_tag: bytes, session_id: str
) -> list[JournalRecord] | None:
    """Every record of the journal *data* extending the snapshot *base_tag*.

    None when the journal has no header naming that snapshot (absent, empty,
    or left behind by a compaction): it holds nothing for this snapshot.
    """
    if base_of(data) != base_tag:
        return None
    return open_records(
        codec, data, start=HEADER_SIZE, base_tag=base_tag, prev_tag=base_tag, session_id=session_id
    )


def _open_one(  # noqa: PLR0917 - private helper of open_records
    codec: SnapshotCodec,
    body: bytes,
    tag: bytes,
    base_tag: bytes,
    prev_tag: bytes,
    session_id: str,
    end: int,
) -> JournalRecord:
    magic, version, kind, flags, klen = _BODY_HEAD.unpack_from(body)
    if magic != RECORD_MAGIC or version != VERSION or kind not in _KINDS:
        raise IntegrityError("not a journal record of a known version")
    pos = _BODY_HEAD.size
    try:
        key_id = body[pos : pos + klen].decode("ascii")
    except UnicodeDecodeError:
        raise IntegrityError("journal record key id is not ASCII") from None
    if key_id not in codec.keyring:
        raise IntegrityError(
            f"journal record was sealed with key {key_id!r}, which is not in the keyring",
            key_id=key_id,
        )
    expected = _tag(codec.keyring.mac_key(key_id), base_tag, prev_tag, body)
    if not _envelope.tag_matches(expected, tag):
        raise IntegrityError("journal record failed its integrity check")
    pos += klen
    (meta_len,) = _LEN.unpack_from(body, pos)
    pos += _LEN.size
    meta = body[pos : pos + meta_len]
    payload = body[pos + meta_len :]
    try:
        data: Any = _json.loads(meta)
        info = structure_info(data)
    except Exception:
        raise IntegrityError("journal record metadata is malformed") from None
    if not hmac.compare_digest(info.session_id, session_id):
        raise IntegrityError("journal record belongs to another session")
    if flags & _FLAG_ENCRYPTED:
        aad = _aad(session_id, base_tag, prev_tag, kind, flags, key_id)
        payload = _envelope.decrypt(
            codec.keyring.enc_key(key_id), payload, aad, what="journal record"
        )
    if flags & _FLAG_ZSTD:
        payload = _envelope.decompress(payload, codec.max_state_bytes, what="journal record")
    else:
        _envelope.check_size(len(payload), codec.max_state_bytes)
    return JournalRecord(kind=kind, info=info, payload=bytes(payload), tag=tag, end=end)


__all__ = [
    "HEADER_SIZE",
    "KIND_INFO",
    "KIND_UPDATE",
    "JournalRecord",
    "base_of",
    "header",
    "open_journal",
    "open_records",
    "replay",
    "seal",
    "snapshot_tag",
]
