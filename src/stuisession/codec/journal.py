"""Journal records: sealed deltas appended after a snapshot.

A journal extends one snapshot (its *base*) with the changes committed since,
so an update costs what the change costs, not what the session costs. The
format (see ``docs/format.md``)::

    journal  := header record*
    header   := "STJH" u8 version (3), 3 zero bytes, base_tag (32 bytes),
                u32 crc32 of the 40 bytes before it
    record   := u32 n, u32 crc32("STJL" || n || version), body (n bytes), u32 n
    body     := "STJR" u8 version, u8 kind, u8 flags, u8 key-id length,
                key_id, u32 meta length, meta, payload, tag (32 bytes)

Version 1 journals (no header or length check) and version 2 journals
(metadata in clear) are still read; a writer compacts one before appending
to it.

``base_tag`` is the final tag of the snapshot the journal extends: a journal
left behind by a crash during compaction names the old snapshot and is
ignored. ``meta`` is the session record after the change: its JSON sealed
with AES-256-GCM (``nonce || ciphertext+tag``) under its own key (HKDF
purpose ``journal-meta``) with the associated data
``"STJR-meta" | version, kind, flags | key_id`` + base_tag + previous tag
(plain JSON in version 2); ``payload`` is the change itself (kind ``UPDATE``: the
:class:`~stuisession.updates.StateUpdate` as JSON, zstd-compressed when large,
AES-256-GCM-sealed when the codec encrypts), empty for kind ``INFO`` (a new
record only, e.g. an access time). Each tag is
``HMAC(key, "STJR-rec" || base_tag || previous tag || body before the tag)``:
records are chained to their base and to each other, so none can be dropped
from the middle, reordered or moved to another session unnoticed. The length
at both ends lets a reader find the last record from the end of the file.

:func:`scan_journal` reads the valid prefix and reports where and why it
stops (:class:`Scan`); whether what follows is a torn, never acknowledged
append or damage is decided by the caller against the acknowledged revision
it keeps elsewhere (the file store's high-water mark): a torn write can only
affect records after the last acknowledged one. :func:`open_records` /
:func:`open_journal` are the strict readers for callers without one: only a
record that stops short of the end of the file (an interrupted append) is
ignored, anything else raises :class:`~stuisession.errors.IntegrityError`.

Like :mod:`stuisession.codec`, this module knows nothing of files.
"""

from __future__ import annotations

import hmac
import struct
import zlib
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
VERSION = 3
#: journals of these versions are read (1: no header or length checks; 2: meta in clear)
READABLE_VERSIONS = (1, 2, 3)
#: the first version whose records seal their metadata
_SEALED_META_FROM = 3
#: HKDF purpose of the key that seals a record's metadata
META_PURPOSE = "journal-meta"
_HEADER_V1 = struct.Struct(">4sB3x32s")
HEADER = struct.Struct(">4sB3x32sI")
HEADER_SIZE = HEADER.size  # 44
_LEN = struct.Struct(">I")
_LEN_CHECK = struct.Struct(">II")
_LEN_DOMAIN = b"STJL"
_BODY_HEAD = struct.Struct(">4sBBBB")
KIND_UPDATE = 1
KIND_INFO = 2
_FLAG_ZSTD = 0x01
_FLAG_ENCRYPTED = 0x02
_KINDS = (KIND_UPDATE, KIND_INFO)
_TAG_DOMAIN = b"STJR-rec"
_AAD_DOMAIN = b"STJR-aad"
_META_DOMAIN = b"STJR-meta"
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
    head = _HEADER_V1.pack(HEADER_MAGIC, VERSION, base_tag)
    return head + _LEN.pack(zlib.crc32(head))


def _len_check(n: int, version: int) -> int:
    return zlib.crc32(_LEN_DOMAIN + _LEN.pack(n) + bytes((version,)))


@attrs.frozen
class Header:
    """A journal's parsed, checked header."""

    version: int
    base_tag: bytes
    size: int


def parse_header(data: bytes | memoryview) -> Header | None:
    """The journal's header; None if *data* is too short to hold one (torn or empty).

    :class:`IntegrityError` if a complete header fails its check (damage).
    """
    if len(data) < _HEADER_V1.size:
        return None
    magic, version, base = _HEADER_V1.unpack_from(data)
    if magic != HEADER_MAGIC or version not in READABLE_VERSIONS:
        raise IntegrityError("journal header is damaged (magic or version)")
    if version == 1:
        return Header(1, bytes(base), _HEADER_V1.size)
    if len(data) < HEADER_SIZE:
        return None
    (check,) = _LEN.unpack_from(data, _HEADER_V1.size)
    if check != zlib.crc32(bytes(data[: _HEADER_V1.size])):
        raise IntegrityError("journal header is damaged (its checksum does not match)")
    return Header(version, bytes(base), HEADER_SIZE)


def base_of(data: bytes) -> bytes | None:
    """The base tag named by a journal's header, or None if there is no valid header."""
    try:
        found = parse_header(data)
    except IntegrityError:
        return None
    return None if found is None else found.base_tag


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
        aad = _aad(info.session_id, base_tag, prev_tag, kind, flags, key_id, VERSION)
        payload = _envelope.encrypt(codec.keyring.enc_key(key_id), payload, aad)
    meta = _json.dumps(unstructure_info(info))
    if VERSION >= _SEALED_META_FROM:  # (tests write version-2 journals by lowering VERSION)
        meta = _envelope.encrypt(
            codec.keyring.derive(META_PURPOSE, key_id),
            meta,
            _meta_aad(base_tag, prev_tag, kind, flags, key_id, VERSION),
        )
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
    size = len(body) + TAG_SIZE
    n = _LEN.pack(size)
    return b"".join((_LEN_CHECK.pack(size, _len_check(size, VERSION)), body, tag, n))


def record_tag(record: bytes) -> bytes:
    """The tag of a record returned by :func:`seal`."""
    return record[-(TAG_SIZE + _LEN.size) : -_LEN.size]


def _tag(mac_key: bytes, base_tag: bytes, prev_tag: bytes, body: bytes) -> bytes:
    return _envelope.mac(mac_key, _TAG_DOMAIN, base_tag, prev_tag, body)


def _aad(  # noqa: PLR0917 - a fixed list of what the ciphertext is bound to
    session_id: str,
    base_tag: bytes,
    prev_tag: bytes,
    kind: int,
    flags: int,
    key_id: str,
    version: int = VERSION,
) -> bytes:
    return b"|".join(
        (_AAD_DOMAIN, bytes((version, kind, flags)), key_id.encode(), session_id.encode())
    ) + (base_tag + prev_tag)


def _meta_aad(  # noqa: PLR0917 - a fixed list of what the sealed record is bound to
    base_tag: bytes, prev_tag: bytes, kind: int, flags: int, key_id: str, version: int
) -> bytes:
    # another domain and key than the payload's: the two never pass for each other
    return b"|".join((_META_DOMAIN, bytes((version, kind, flags)), key_id.encode())) + (
        base_tag + prev_tag
    )


@attrs.frozen
class Scan:
    """The valid prefix of a journal and why reading stopped.

    ``records`` verified in order, ``end`` just past the last of them (the
    header's end when there is none), ``problem`` the failure that stopped
    the scan (None: the file ended cleanly), ``incomplete`` whether that
    failure is a frame that stops short of the end of the file (what an
    interrupted append leaves).
    """

    records: list[JournalRecord]
    end: int
    problem: IntegrityError | None = None
    incomplete: bool = False

    def strict(self) -> list[JournalRecord]:
        """The records; raises the problem unless it is an incomplete last frame."""
        if self.problem is not None and not self.incomplete:
            raise self.problem
        return self.records


def scan_records(
    codec: SnapshotCodec,
    data: bytes | memoryview,
    *,
    start: int,
    base_tag: bytes,
    prev_tag: bytes,
    session_id: str,
    version: int = VERSION,
) -> Scan:
    """Verify and decode the records of *data* from offset *start*, up to the first failure."""
    view = memoryview(data)
    out: list[JournalRecord] = []
    pos = start
    end = len(view)
    prefix = _LEN_CHECK.size if version >= 2 else _LEN.size

    def stop(message: str, *, incomplete: bool = False) -> Scan:
        return Scan(out, pos, IntegrityError(message), incomplete)

    while pos < end:
        if end - pos < prefix:
            return stop("journal ends inside a record's length", incomplete=True)
        (n,) = _LEN.unpack_from(view, pos)
        if version >= 2:
            (check,) = _LEN.unpack_from(view, pos + _LEN.size)
            if check != _len_check(n, version):
                # a damaged length is never taken for an interrupted append
                return stop("journal record length is damaged (its checksum does not match)")
        if n > MAX_RECORD_SIZE or n < _BODY_HEAD.size + TAG_SIZE:
            return stop("journal record has an implausible length")
        frame_end = pos + prefix + n + _LEN.size
        if frame_end > end:
            return stop("journal ends inside a record", incomplete=True)
        (trailer,) = _LEN.unpack_from(view, frame_end - _LEN.size)
        if trailer != n:
            return stop("journal record is damaged (its two lengths differ)")
        body = bytes(view[pos + prefix : frame_end - _LEN.size - TAG_SIZE])
        tag = bytes(view[frame_end - _LEN.size - TAG_SIZE : frame_end - _LEN.size])
        try:
            record = _open_one(codec, body, tag, base_tag, prev_tag, session_id, frame_end, version)
        except IntegrityError as exc:
            return Scan(out, pos, exc, False)
        out.append(record)
        prev_tag = tag
        pos = frame_end
    return Scan(out, pos)


def open_records(
    codec: SnapshotCodec,
    data: bytes | memoryview,
    *,
    start: int,
    base_tag: bytes,
    prev_tag: bytes,
    session_id: str,
    version: int = VERSION,
) -> list[JournalRecord]:
    """Verify and decode the records of *data* from offset *start* (strict).

    *prev_tag* is the tag before *start* (the base tag at the first record).
    An incomplete record at the very end is ignored (its append was never
    acknowledged); any other damage raises :class:`IntegrityError`.
    """
    return scan_records(
        codec,
        data,
        start=start,
        base_tag=base_tag,
        prev_tag=prev_tag,
        session_id=session_id,
        version=version,
    ).strict()


def scan_journal(
    codec: SnapshotCodec, data: bytes, *, base_tag: bytes, session_id: str
) -> tuple[Header | None, Scan]:
    """The journal *data*'s header and the valid prefix of its records for *base_tag*.

    The header is None (and the scan empty) when there is none to read: an
    empty or torn journal (``Scan.incomplete``), or one whose intact header
    names another snapshot (a journal left behind by a compaction; ``end``
    is 0). A damaged header is a scan problem.
    """
    try:
        found = parse_header(data)
    except IntegrityError as exc:
        return None, Scan([], 0, exc, False)
    if found is None:
        if not data:
            return None, Scan([], 0)
        return None, Scan([], 0, IntegrityError("journal header is incomplete"), True)
    if found.base_tag != base_tag:
        return None, Scan([], 0)  # stale: extends another snapshot
    scan = scan_records(
        codec,
        data,
        start=found.size,
        base_tag=base_tag,
        prev_tag=base_tag,
        session_id=session_id,
        version=found.version,
    )
    return found, scan


def open_journal(
    codec: SnapshotCodec, data: bytes, *, base_tag: bytes, session_id: str
) -> list[JournalRecord] | None:
    """Every record of the journal *data* extending the snapshot *base_tag* (strict).

    None when the journal has no header naming that snapshot (absent, empty,
    or left behind by a compaction): it holds nothing for this snapshot.
    """
    found, scan = scan_journal(codec, data, base_tag=base_tag, session_id=session_id)
    if found is None:
        if scan.problem is not None and not scan.incomplete:
            raise scan.problem
        return None
    return scan.strict()


def _open_one(  # noqa: PLR0917 - private helper of scan_records
    codec: SnapshotCodec,
    body: bytes,
    tag: bytes,
    base_tag: bytes,
    prev_tag: bytes,
    session_id: str,
    end: int,
    version: int,
) -> JournalRecord:
    magic, rversion, kind, flags, klen = _BODY_HEAD.unpack_from(body)
    if magic != RECORD_MAGIC or rversion != version or kind not in _KINDS:
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
    if version >= _SEALED_META_FROM:
        meta = _envelope.decrypt(
            codec.keyring.derive(META_PURPOSE, key_id),
            meta,
            _meta_aad(base_tag, prev_tag, kind, flags, key_id, version),
            what="journal record metadata",
        )
    try:
        data: Any = _json.loads(meta)
        info = structure_info(data)
    except Exception:
        raise IntegrityError("journal record metadata is malformed") from None
    if not hmac.compare_digest(info.session_id, session_id):
        raise IntegrityError("journal record belongs to another session")
    if flags & _FLAG_ENCRYPTED:
        aad = _aad(session_id, base_tag, prev_tag, kind, flags, key_id, version)
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
    "VERSION",
    "Header",
    "JournalRecord",
    "Scan",
    "base_of",
    "header",
    "open_journal",
    "open_records",
    "parse_header",
    "record_tag",
    "replay",
    "scan_journal",
    "scan_records",
    "seal",
    "snapshot_tag",
]
