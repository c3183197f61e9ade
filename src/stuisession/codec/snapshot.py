"""The snapshot codec: a session <-> bytes, versioned, compressed, sealed.

Layout (all integers big-endian; see ``docs/format.md``)::

    header   18 bytes  magic "STSN", format version (2), flags, schema version,
                       key-id length, reserved, meta length, payload length
    key_id   n bytes   ASCII id of the keyring key that sealed the snapshot
    meta     m bytes   the SessionInfo as compact JSON, AES-256-GCM-sealed
                       (12-byte nonce || ciphertext+tag) under its own key
                       (HKDF purpose ``snapshot-meta``) and associated data
                       ``"STSN-meta" | version, flags | schema | key_id``
    head_tag 32 bytes  HMAC-SHA256("STSN-head" || header || key_id || meta)
    payload  p bytes   the state JSON, zstd-compressed, then AES-256-GCM-sealed
                       (12-byte nonce || ciphertext+tag) when flag ENCRYPTED is set
    tag      32 bytes  HMAC-SHA256(every byte before it)

``head_tag`` lets listing, expiry sweeps and compare-and-swap trust the
metadata without reading the payload; ``tag`` covers the whole file. Nothing
reads the payload before ``tag`` has been checked in constant time, nor
decrypts the metadata before ``head_tag`` has.

Format version 1 (the metadata as plain JSON) is still read; every write
produces version 2, so an old snapshot is upgraded when it is next written.
The metadata is sealed whether or not the state is (``encrypt=False`` leaves
only the state in clear): a copy of a store does not show session or client ids.

The codec knows nothing of files, keys on disk or protocol commands.
"""

from __future__ import annotations

import hmac
import struct
from typing import Any

import attrs

from stuisession import _json
from stuisession.codec import _envelope
from stuisession.errors import IntegrityError, StateTooLarge
from stuisession.keys import Keyring
from stuisession.state.forms import (
    from_wire_dict,
    structure_info,
    to_wire_dict,
    unstructure_info,
)
from stuisession.state.migrations import migrate
from stuisession.state.model import SCHEMA_VERSION, Session, SessionInfo, SessionState

MAGIC = b"STSN"
#: the version every write produces
FORMAT_VERSION = 2
#: versions :func:`parse_header` accepts (1: metadata in clear)
READABLE_VERSIONS = (1, 2)
FLAG_ZSTD = 0x01
FLAG_ENCRYPTED = 0x02
_KNOWN_FLAGS = FLAG_ZSTD | FLAG_ENCRYPTED
#: the envelope's sizes, named here too: the store and tests know them as snapshot facts
TAG_SIZE = _envelope.TAG_SIZE
NONCE_SIZE = _envelope.NONCE_SIZE
_HEADER = struct.Struct(">4sBBHBBII")
HEADER_SIZE = _HEADER.size  # 18
_HEAD_DOMAIN = b"STSN-head"
_AAD_DOMAIN = b"STSN-aad"
_META_DOMAIN = b"STSN-meta"
#: HKDF purpose of the key that seals the metadata (never the state's key)
META_PURPOSE = "snapshot-meta"
#: the version byte in the state's associated data: the state is sealed the same way in
#: versions 1 and 2, so a record rewritten into version 2 keeps its sealed state as it is
_PAYLOAD_AAD_VERSION = 1
#: a header of a plausible snapshot can't claim more metadata than this
MAX_META_SIZE = 64 * 1024


@attrs.frozen
class SnapshotHeader:
    """The fixed part of a snapshot, parsed but not yet trusted."""

    format_version: int
    flags: int
    schema_version: int
    key_id: str
    meta_len: int
    payload_len: int

    @property
    def meta_offset(self) -> int:
        return HEADER_SIZE + len(self.key_id)

    @property
    def payload_offset(self) -> int:
        return self.meta_offset + self.meta_len + TAG_SIZE

    @property
    def total_size(self) -> int:
        return self.payload_offset + self.payload_len + TAG_SIZE


def parse_header(blob: bytes) -> SnapshotHeader:
    """Parse the header of *blob*, raising :class:`IntegrityError` if it is malformed.

    Only structure is checked here (magic, version, lengths); nothing is trusted
    until a tag has been verified.
    """
    if len(blob) < HEADER_SIZE:
        raise IntegrityError("snapshot is truncated (no complete header)")
    magic, fmt, flags, schema, klen, reserved, meta_len, payload_len = _HEADER.unpack_from(blob)
    if magic != MAGIC:
        raise IntegrityError("not a stuisession snapshot (bad magic)")
    if fmt not in READABLE_VERSIONS:
        raise IntegrityError(f"unsupported snapshot format version {fmt}")
    if flags & ~_KNOWN_FLAGS or reserved != 0 or klen == 0:
        raise IntegrityError("snapshot header has unknown flags or reserved bits set")
    if meta_len > MAX_META_SIZE:
        raise IntegrityError("snapshot header claims an implausible metadata size")
    try:
        key_id = blob[HEADER_SIZE : HEADER_SIZE + klen].decode("ascii")
    except UnicodeDecodeError:
        raise IntegrityError("snapshot key id is not ASCII") from None
    header = SnapshotHeader(fmt, flags, schema, key_id, meta_len, payload_len)
    if len(key_id) != klen:
        raise IntegrityError("snapshot is truncated (in the key id)")
    return header


class Snapshot:
    """A verified snapshot: its record is trusted, its state decoded lazily.

    Obtained from :meth:`SnapshotCodec.open`. ``state_json()`` hands over the
    stored state bytes (decrypted and decompressed) without parsing them.
    """

    __slots__ = ("_codec", "_state_json", "blob", "header", "info")

    def __init__(
        self, codec: SnapshotCodec, blob: bytes, header: SnapshotHeader, info: SessionInfo
    ) -> None:
        self._codec = codec
        self.blob = blob
        self.header = header
        self.info = info
        self._state_json: bytes | None = None

    @property
    def schema_version(self) -> int:
        """The schema version of the stored state (before migration)."""
        return self.header.schema_version

    def state_json(self) -> bytes:
        """The state as stored (JSON bytes at ``schema_version``), decrypted and decompressed."""
        if self._state_json is None:
            self._state_json = self._codec.unseal_state(self)
        return self._state_json

    def forget_state_json(self) -> None:
        """Drop the decompressed state kept by :meth:`state_json` (to free memory)."""
        self._state_json = None

    def with_info(self, info: SessionInfo) -> Snapshot:
        """The same stored state under a newer record (the record was kept elsewhere)."""
        return Snapshot(self._codec, self.blob, self.header, info)

    def current_state_json(self) -> bytes:
        """The state as JSON of the *current* schema (migrated and re-encoded if older)."""
        if self.schema_version == SCHEMA_VERSION:
            return self.state_json()
        return _json.dumps(to_wire_dict(self.state()))

    def state(self) -> SessionState:
        """The state, migrated to the current schema and structured into attrs objects."""
        try:
            data = _json.loads(self.state_json())
        except ValueError:
            raise IntegrityError("snapshot state is not valid JSON") from None
        if not isinstance(data, dict):
            raise IntegrityError("snapshot state is not a JSON object")
        data = migrate(data, self.schema_version)
        try:
            return from_wire_dict(data)
        except Exception as exc:  # cattrs raises several exception types
            raise IntegrityError(f"snapshot state does not fit the schema: {exc}") from None

    def session(self) -> Session:
        """The full session (record + structured state)."""
        return Session.from_info(self.info, self.state())

    def __repr__(self) -> str:
        return f"Snapshot(session_id={self.info.session_id!r}, revision={self.info.revision})"


class SnapshotCodec:
    """Encodes sessions to sealed snapshots and opens them again.

    :param keyring: master keys; the current one seals new snapshots.
    :param encrypt: seal the state with AES-256-GCM (on by default); the record is
        sealed either way.
    :param compression_level: zstd level for the state.
    :param max_state_bytes: refuse to decompress a state larger than this.
    """

    def __init__(
        self,
        keyring: Keyring,
        *,
        encrypt: bool = True,
        compression_level: int = 3,
        max_state_bytes: int = 64 * 1024 * 1024,
    ) -> None:
        self.keyring = keyring
        self.encrypt = encrypt
        self.max_state_bytes = max_state_bytes
        self._level = compression_level

    # -- writing ------------------------------------------------------------------
    def encode(self, session: Session) -> bytes:
        """Seal *session* into a snapshot."""
        return self.encode_state_json(session.info, _json.dumps(to_wire_dict(session.state)))

    def encode_state_json(
        self, info: SessionInfo, state_json: bytes, *, schema_version: int = SCHEMA_VERSION
    ) -> bytes:
        """Seal an already-encoded state (JSON bytes of *schema_version*) with *info*."""
        if len(state_json) > self.max_state_bytes:
            raise StateTooLarge(
                f"state is {len(state_json)} bytes, over the {self.max_state_bytes}-byte limit",
                part="state",
            )
        compressed = _envelope.compress(state_json, self._level)
        return self._seal(info, compressed, schema_version, FLAG_ZSTD)

    def rewrite_info(self, snapshot: Snapshot, info: SessionInfo) -> bytes:
        """A new snapshot (current format) with *info* and the same state, without
        recompressing it.

        Used to record accesses cheaply. The state stays sealed under its key; a
        version-1 snapshot comes out as version 2 (its metadata sealed).
        """
        if info.session_id != snapshot.info.session_id:
            raise ValueError("rewrite_info can not move a state to another session")
        h = snapshot.header
        payload = snapshot.blob[h.payload_offset : h.payload_offset + h.payload_len]
        return self._assemble(info, payload, h.schema_version, h.flags, h.key_id)

    def _seal(self, info: SessionInfo, compressed: bytes, schema: int, flags: int) -> bytes:
        key_id = self.keyring.current_id
        if self.encrypt:
            flags |= FLAG_ENCRYPTED
            aad = self._aad(flags, schema, key_id, info.session_id)
            payload = _envelope.encrypt(self.keyring.enc_key(key_id), compressed, aad)
        else:
            payload = compressed
        return self._assemble(info, payload, schema, flags, key_id)

    def _assemble(
        self, info: SessionInfo, payload: bytes, schema: int, flags: int, key_id: str
    ) -> bytes:
        meta = _envelope.encrypt(
            self.keyring.derive(META_PURPOSE, key_id),
            _json.dumps(unstructure_info(info)),
            self._meta_aad(FORMAT_VERSION, flags, schema, key_id),
        )
        kid = key_id.encode("ascii")
        header = _HEADER.pack(
            MAGIC, FORMAT_VERSION, flags, schema, len(kid), 0, len(meta), len(payload)
        )
        mac_key = self.keyring.mac_key(key_id)
        head = header + kid + meta
        head_tag = _envelope.mac(mac_key, _HEAD_DOMAIN, head)
        tag = _envelope.mac(mac_key, head, head_tag, payload)
        return b"".join((head, head_tag, payload, tag))

    @staticmethod
    def _aad(flags: int, schema: int, key_id: str, session_id: str) -> bytes:
        # binds the ciphertext to its session: a payload moved into another
        # session's snapshot fails to decrypt even with a valid key
        return b"|".join(
            (
                _AAD_DOMAIN,
                bytes((_PAYLOAD_AAD_VERSION, flags)),
                str(schema).encode(),
                key_id.encode(),
                session_id.encode(),
            )
        )

    @staticmethod
    def _meta_aad(version: int, flags: int, schema: int, key_id: str) -> bytes:
        # another domain, key and nonce than the state's: the two never pass for each other
        return b"|".join(
            (_META_DOMAIN, bytes((version, flags)), str(schema).encode(), key_id.encode())
        )

    # -- reading ------------------------------------------------------------------
    def _mac_key_for(self, header: SnapshotHeader) -> bytes:
        if header.key_id not in self.keyring:
            raise IntegrityError(
                f"snapshot was sealed with key {header.key_id!r}, which is not in the keyring",
                key_id=header.key_id,
            )
        return self.keyring.mac_key(header.key_id)

    def read_info(self, blob: bytes, expected_session_id: str | None = None) -> SessionInfo:
        """Verify only the head tag and return the record (cheap: the payload is not read).

        *blob* may be just a prefix of the snapshot that contains the header,
        key id, metadata and head tag.
        """
        header = parse_header(blob)
        end = header.meta_offset + header.meta_len
        if len(blob) < end + TAG_SIZE:
            raise IntegrityError("snapshot is truncated (in the metadata)")
        head = blob[:end]
        expected = _envelope.mac(self._mac_key_for(header), _HEAD_DOMAIN, head)
        if not _envelope.tag_matches(expected, blob[end : end + TAG_SIZE]):
            raise IntegrityError("snapshot metadata failed its integrity check")
        return self._info_from_meta(header, blob[header.meta_offset : end], expected_session_id)

    def open(self, blob: bytes, expected_session_id: str | None = None) -> Snapshot:
        """Verify the whole snapshot and return it; the state is decoded on demand."""
        header = parse_header(blob)
        if len(blob) != header.total_size:
            raise IntegrityError(
                "snapshot is truncated"
                if len(blob) < header.total_size
                else "snapshot has trailing bytes"
            )
        mac_key = self._mac_key_for(header)
        body_end = header.total_size - TAG_SIZE
        expected = _envelope.mac(mac_key, memoryview(blob)[:body_end])
        if not _envelope.tag_matches(expected, blob[body_end:]):
            raise IntegrityError("snapshot failed its integrity check")
        meta_end = header.meta_offset + header.meta_len
        info = self._info_from_meta(
            header, blob[header.meta_offset : meta_end], expected_session_id
        )
        return Snapshot(self, blob, header, info)

    def decode(self, blob: bytes, expected_session_id: str | None = None) -> Session:
        """Verify and fully decode a snapshot into a :class:`Session`."""
        return self.open(blob, expected_session_id).session()

    def _info_from_meta(
        self, header: SnapshotHeader, meta: bytes, expected_session_id: str | None
    ) -> SessionInfo:
        """The record in *meta* (its tag already checked): decrypted from version 2 on."""
        if header.format_version >= 2:
            meta = _envelope.decrypt(
                self.keyring.derive(META_PURPOSE, header.key_id),
                meta,
                self._meta_aad(
                    header.format_version, header.flags, header.schema_version, header.key_id
                ),
                what="snapshot metadata",
            )
        try:
            data: Any = _json.loads(meta)
            info = structure_info(data)
        except Exception:  # a valid tag over bad metadata means a writer bug or a leaked key
            raise IntegrityError("snapshot metadata is malformed") from None
        if expected_session_id is not None and not hmac.compare_digest(
            info.session_id, expected_session_id
        ):
            raise IntegrityError("snapshot belongs to another session")
        return info

    def unseal_state(self, snap: Snapshot) -> bytes:
        """The stored state bytes of *snap* (decrypted, decompressed), through the one
        envelope and its size guard.

        Raises :class:`IntegrityError` (fails to decrypt/decompress) or
        :class:`StateTooLarge` (decodes to over ``max_state_bytes``).
        """
        h = snap.header
        payload = snap.blob[h.payload_offset : h.payload_offset + h.payload_len]
        if h.flags & FLAG_ENCRYPTED:
            aad = self._aad(h.flags, h.schema_version, h.key_id, snap.info.session_id)
            payload = _envelope.decrypt(
                self.keyring.enc_key(h.key_id), payload, aad, what="snapshot state"
            )
        if h.flags & FLAG_ZSTD:
            return _envelope.decompress(payload, self.max_state_bytes, what="snapshot state")
        _envelope.check_size(len(payload), self.max_state_bytes)
        return bytes(payload)
