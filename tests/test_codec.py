"""The snapshot codec and the small modules it rests on.

Property tests for ``stuisession.codec.snapshot`` (round trips, tamper detection,
truncation, keys, payload transplants, size limits, rotation, migrations),
then unit tests for ``jsonutil``, ``ids``, ``keys`` and ``lifecycle``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import os
import stat
import struct
import traceback
from pathlib import Path
from typing import Any

import attrs
import pytest
import zstandard
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from strategies import (
    BASE64URL,
    client_ids,
    json_objects,
    json_values,
    session_ids,
    sessions,
    simple_session_states,
)
from stuisession import _json as jsonutil
from stuisession import ids
from stuisession._json import RawJSON
from stuisession.codec import snapshot as codec_module
from stuisession.codec.snapshot import (
    FLAG_ENCRYPTED,
    FLAG_ZSTD,
    FORMAT_VERSION,
    HEADER_SIZE,
    MAGIC,
    MAX_META_SIZE,
    NONCE_SIZE,
    SnapshotCodec,
    parse_header,
)
from stuisession.errors import (
    ConfigurationError,
    IntegrityError,
    SessionClosed,
    SessionExpired,
    StateTooLarge,
    ValidationError,
)
from stuisession.keys import ENV_KEYRING, KEY_BYTES, Keyring
from stuisession.state import lifecycle, migrations
from stuisession.state.forms import to_wire_dict, unstructure_info
from stuisession.state.model import SCHEMA_VERSION, Session, SessionInfo, SessionStatus
from stuisession.state.schema import SessionState, to_wire
from volume import examples

# -- shared fixtures (module level: Hypothesis tests can't use function fixtures) -------
pytestmark = pytest.mark.volume

RING = Keyring({"k1": bytes(range(32))}, "k1")
CODECS = {True: SnapshotCodec(RING), False: SnapshotCodec(RING, encrypt=False)}
T0 = 1_767_225_600.0
SID_A = "session_" + "A" * 43
SID_B = "session_" + "B" * 43

# fewer examples in make test, the full volume in make faults (tests/volume.py)
PROPS = settings(
    max_examples=examples(full=100, quick=35),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
FAST = settings(
    max_examples=examples(full=150, quick=50),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
#: records matter here, not states: cheap states, more examples
LIGHT = sessions(states=st.just(SessionState()) | simple_session_states())


def _session(sid: str = SID_A, **state: Any) -> Session:
    session = lifecycle.new_session(
        "client-1",
        now=T0,
        timeout=3600,
        session_id=sid,
        state=SessionState(session_state=state or {"x": 1, "text": "héllo ✓"}),
    )
    # a fixed history id: each call makes the same session (creation mints a random one)
    return attrs.evolve(session, lineage="codec-tests-lineage")


def _head_end(blob: bytes) -> int:
    """Offset just past the head tag."""
    return parse_header(blob).payload_offset


def _payload(blob: bytes) -> bytes:
    h = parse_header(blob)
    return blob[h.payload_offset : h.payload_offset + h.payload_len]


def _meta(blob: bytes) -> bytes:
    h = parse_header(blob)
    return blob[h.meta_offset : h.meta_offset + h.meta_len]


def _flip(blob: bytes, bit: int) -> bytes:
    b = bytearray(blob)
    b[bit // 8] ^= 1 << (bit % 8)
    return bytes(b)


# -- round trips ------------------------------------------------------------------------
@PROPS
@given(sessions(), st.booleans())
def test_decode_encode_roundtrip(session: Session, encrypt: bool) -> None:
    codec = CODECS[encrypt]
    blob = codec.encode(session)
    assert codec.decode(blob) == session
    assert codec.decode(blob, expected_session_id=session.session_id) == session
    header = parse_header(blob)
    assert header.total_size == len(blob)
    assert header.schema_version == SCHEMA_VERSION
    assert header.key_id == "k1"
    assert bool(header.flags & FLAG_ENCRYPTED) is encrypt
    assert header.flags & FLAG_ZSTD


@PROPS
@given(LIGHT)
def test_read_info_equals_session_info(session: Session) -> None:
    for codec in CODECS.values():
        blob = codec.encode(session)
        assert codec.read_info(blob) == session.info
        assert codec.open(blob).info == session.info
        # the record is readable from a prefix: header, key id, meta and head tag
        assert codec.read_info(blob[: _head_end(blob)], session.session_id) == session.info
        with pytest.raises(IntegrityError, match="truncated"):
            codec.read_info(blob[: _head_end(blob) - 1])


@FAST
@given(sessions(states=st.just(SessionState())), st.booleans())
def test_state_json_is_the_wire_form(session: Session, encrypt: bool) -> None:
    snap = CODECS[encrypt].open(CODECS[encrypt].encode(session))
    assert snap.schema_version == SCHEMA_VERSION
    assert snap.state_json() == jsonutil.dumps(to_wire_dict(session.state))
    assert snap.current_state_json() == snap.state_json()
    assert json.loads(snap.state_json()) == to_wire(session.state)
    assert str(session.session_id[:16]) in repr(snap)


def test_neither_record_nor_state_is_in_clear_in_a_snapshot() -> None:
    secret_text = "top-secret-workspace-text"
    session = _session(note=secret_text * 3)
    for encrypt in (True, False):
        blob = CODECS[encrypt].encode(session)
        # the record is sealed too (format 2), whether or not the state is
        assert session.session_id.encode() not in blob
        assert b"client-1" not in blob
        assert b"session_id" not in blob
    blob = CODECS[True].encode(session)
    assert secret_text.encode() not in blob
    # two encodings of one session differ (fresh nonces) and both decode
    other = CODECS[True].encode(session)
    assert _payload(other)[:NONCE_SIZE] != _payload(blob)[:NONCE_SIZE]
    assert _meta(other)[:NONCE_SIZE] != _meta(blob)[:NONCE_SIZE]
    assert CODECS[True].decode(other) == CODECS[True].decode(blob) == session


def test_plain_snapshot_holds_the_compressed_state_json() -> None:
    session = _session()
    blob = CODECS[False].encode(session)
    state = zstandard.ZstdDecompressor().decompress(_payload(blob))
    assert json.loads(state) == to_wire(session.state)
    # either codec opens either kind: the flag, not the codec setting, decides
    assert CODECS[True].decode(blob) == session
    assert CODECS[False].decode(CODECS[True].encode(session)) == session


def test_layout_matches_the_documented_offsets() -> None:
    session = _session()
    blob = CODECS[True].encode(session)
    magic, fmt, flags, schema, klen, reserved, mlen, plen = struct.unpack_from(">4sBBHBBII", blob)
    assert (magic, fmt, flags, schema, reserved) == (
        MAGIC,
        FORMAT_VERSION,
        FLAG_ZSTD | FLAG_ENCRYPTED,
        SCHEMA_VERSION,
        0,
    )
    assert FORMAT_VERSION == 2
    assert HEADER_SIZE == 18
    assert blob[18 : 18 + klen] == b"k1"
    # the record: AES-256-GCM under its own HKDF key, with its own associated data
    meta = blob[18 + klen : 18 + klen + mlen]
    meta_key = HKDF(
        algorithm=hashes.SHA256(), length=32, salt=None, info=b"stuisession/v1/snapshot-meta"
    ).derive(RING._keys["k1"])
    assert meta_key != RING.enc_key("k1")
    meta_aad = b"|".join((b"STSN-meta", bytes((2, flags)), str(schema).encode(), b"k1"))
    plain = AESGCM(meta_key).decrypt(meta[:12], meta[12:], meta_aad)
    assert json.loads(plain) == unstructure_info(session.info)
    assert len(blob) == 18 + klen + mlen + 32 + plen + 32 == 82 + klen + mlen + plen
    mac_key = RING.mac_key("k1")
    head = blob[: 18 + klen + mlen]
    head_tag = blob[18 + klen + mlen : 50 + klen + mlen]
    assert head_tag == hmac.new(mac_key, b"STSN-head" + head, hashlib.sha256).digest()
    assert blob[-32:] == hmac.new(mac_key, blob[:-32], hashlib.sha256).digest()
    # AES-256-GCM with the documented associated data (its version byte stays 1), then zstd
    payload = _payload(blob)
    aad = b"|".join(
        (b"STSN-aad", bytes((1, flags)), str(schema).encode(), b"k1", session.session_id.encode())
    )
    compressed = AESGCM(RING.enc_key("k1")).decrypt(payload[:12], payload[12:], aad)
    assert zstandard.frame_content_size(compressed) > 0  # the size is in the frame header
    assert json.loads(zstandard.ZstdDecompressor().decompress(compressed)) == to_wire(session.state)


def test_sealed_record_and_sealed_state_never_pass_for_each_other() -> None:
    session = _session()
    blob = CODECS[True].encode(session)
    h = parse_header(blob)
    meta, payload = _meta(blob), _payload(blob)
    # the record's ciphertext under the state's key and associated data, and back: refused
    with pytest.raises(InvalidTag):
        AESGCM(RING.enc_key("k1")).decrypt(meta[:12], meta[12:], b"")
    meta_key = RING.derive("snapshot-meta", "k1")
    meta_aad = b"|".join((b"STSN-meta", bytes((2, h.flags)), str(h.schema_version).encode(), b"k1"))
    with pytest.raises(InvalidTag):
        AESGCM(meta_key).decrypt(payload[:12], payload[12:], meta_aad)


# -- rewrite_info -----------------------------------------------------------------------
@PROPS
@given(LIGHT, st.booleans(), st.floats(0, 1e6))
def test_rewrite_info_keeps_state_and_changes_record(
    session: Session, encrypt: bool, later: float
) -> None:
    codec = CODECS[encrypt]
    snap = codec.open(codec.encode(session))
    info = attrs.evolve(
        session.info,
        last_accessed=session.last_accessed + later,
        expires_at=session.expires_at + later,
        revision=session.revision + 1,
    )
    blob = codec.rewrite_info(snap, info)
    assert codec.read_info(blob) == info
    again = codec.open(blob, expected_session_id=session.session_id)
    assert again.info == info
    assert _payload(blob) == _payload(snap.blob)  # not recompressed or re-encrypted
    assert again.state() == session.state
    assert again.session().info == info


def test_rewrite_info_refuses_to_move_a_state() -> None:
    snap = CODECS[True].open(CODECS[True].encode(_session(SID_A)))
    other = attrs.evolve(snap.info, session_id=SID_B)
    with pytest.raises(ValueError, match="another session"):
        CODECS[True].rewrite_info(snap, other)


def test_rewrite_info_keeps_the_sealing_key_after_rotation() -> None:
    snap = CODECS[True].open(CODECS[True].encode(_session()))
    rotated = SnapshotCodec(RING.rotated("k2"))
    blob = rotated.rewrite_info(snap, attrs.evolve(snap.info, revision=9))
    assert parse_header(blob).key_id == "k1"
    assert rotated.decode(blob).revision == 9


# -- tampering --------------------------------------------------------------------------
def _tamper_check(codec: SnapshotCodec, blob: bytes, bit: int) -> None:
    bad = _flip(blob, bit)
    with pytest.raises(IntegrityError):
        codec.open(bad)
    with pytest.raises(IntegrityError):
        codec.decode(bad)
    if bit // 8 < _head_end(blob):
        with pytest.raises(IntegrityError):
            codec.read_info(bad)
    else:  # the record does not depend on the payload or the final tag
        assert codec.read_info(bad) == codec.read_info(blob)


@PROPS
@given(LIGHT, st.booleans(), st.data())
def test_any_flipped_bit_is_detected(session: Session, encrypt: bool, data: st.DataObject) -> None:
    codec = CODECS[encrypt]
    blob = codec.encode(session)
    bit = data.draw(st.integers(0, len(blob) * 8 - 1), label="bit")
    _tamper_check(codec, blob, bit)


@pytest.mark.parametrize("encrypt", [True, False])
def test_every_flipped_bit_of_a_small_snapshot_is_detected(encrypt: bool) -> None:
    codec = CODECS[encrypt]
    blob = codec.encode(_session())
    for bit in range(len(blob) * 8):
        _tamper_check(codec, blob, bit)


@PROPS
@given(LIGHT, st.booleans(), st.data())
def test_every_truncation_is_detected(session: Session, encrypt: bool, data: st.DataObject) -> None:
    codec = CODECS[encrypt]
    blob = codec.encode(session)
    n = data.draw(st.integers(0, len(blob) - 1), label="length")
    with pytest.raises(IntegrityError, match="truncated"):
        codec.open(blob[:n])
    if n < _head_end(blob):
        with pytest.raises(IntegrityError, match="truncated"):
            codec.read_info(blob[:n])


def test_all_prefixes_of_a_small_snapshot_are_refused() -> None:
    codec = CODECS[True]
    blob = codec.encode(_session())
    for n in range(len(blob)):
        with pytest.raises(IntegrityError):
            codec.open(blob[:n])


@FAST
@given(st.binary(min_size=1, max_size=64), st.booleans())
def test_trailing_bytes_are_detected(extra: bytes, encrypt: bool) -> None:
    codec = CODECS[encrypt]
    blob = codec.encode(_session())
    with pytest.raises(IntegrityError, match="trailing bytes"):
        codec.open(blob + extra)
    # a record-only read looks at the head alone
    assert codec.read_info(blob + extra) == _session().info


@FAST
@given(st.binary(max_size=200))
def test_garbage_is_refused(junk: bytes) -> None:
    for codec in CODECS.values():
        with pytest.raises(IntegrityError):
            codec.open(junk)
        with pytest.raises(IntegrityError):
            codec.read_info(junk)


def _header(**fields: Any) -> bytes:
    values = {
        "magic": MAGIC,
        "fmt": FORMAT_VERSION,
        "flags": FLAG_ZSTD,
        "schema": SCHEMA_VERSION,
        "klen": 2,
        "reserved": 0,
        "mlen": 2,
        "plen": 0,
    }
    values.update(fields)
    return struct.pack(">4sBBHBBII", *values.values()) + b"k1{}" + bytes(64)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"magic": b"STSX"}, "bad magic"),
        ({"fmt": 3}, "format version 3"),
        ({"fmt": 0}, "format version 0"),
        ({"flags": 0x04}, "unknown flags"),
        ({"reserved": 1}, "reserved"),
        ({"klen": 0}, "reserved"),
        ({"mlen": MAX_META_SIZE + 1}, "implausible metadata size"),
        ({"klen": 200}, "truncated"),
    ],
)
def test_malformed_headers_are_refused(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(IntegrityError, match=message):
        parse_header(_header(**fields))


def test_non_ascii_key_id_is_refused() -> None:
    blob = _header()
    blob = blob[:HEADER_SIZE] + b"k\xff" + blob[HEADER_SIZE + 2 :]
    with pytest.raises(IntegrityError, match="not ASCII"):
        parse_header(blob)


# -- keys -------------------------------------------------------------------------------
def test_wrong_keyring_names_the_unknown_key() -> None:
    blob = CODECS[True].encode(_session())
    stranger = SnapshotCodec(Keyring.generate("other-key"))
    for read in (stranger.open, stranger.read_info, stranger.decode):
        with pytest.raises(IntegrityError, match=r"'k1'.*not in the keyring") as info:
            read(blob)
        assert info.value.details == {"key_id": "k1"}


@pytest.mark.parametrize("encrypt", [True, False])
def test_same_key_id_with_another_secret_is_refused(encrypt: bool) -> None:
    blob = CODECS[encrypt].encode(_session())
    impostor = SnapshotCodec(Keyring({"k1": bytes(32)}, "k1"))
    with pytest.raises(IntegrityError, match="integrity check"):
        impostor.open(blob)
    with pytest.raises(IntegrityError, match="metadata failed its integrity check"):
        impostor.read_info(blob)


@pytest.mark.parametrize("encrypt", [True, False])
def test_snapshot_of_another_session_is_refused(encrypt: bool) -> None:
    codec = CODECS[encrypt]
    blob = codec.encode(_session(SID_A))
    for read in (codec.open, codec.read_info, codec.decode):
        with pytest.raises(IntegrityError, match="belongs to another session"):
            read(blob, expected_session_id=SID_B)


def test_transplanted_payload_fails_to_decrypt() -> None:
    """An attacker holding the MAC key swaps in another session's sealed state."""
    codec = CODECS[True]
    victim = _session(SID_A, mine=True)
    donor = _session(SID_B, theirs=True)
    donor_blob = codec.encode(donor)
    h = parse_header(donor_blob)
    forged = codec._assemble(victim.info, _payload(donor_blob), h.schema_version, h.flags, "k1")
    snap = codec.open(forged, expected_session_id=SID_A)  # every tag is valid ...
    assert snap.info == victim.info
    with pytest.raises(IntegrityError, match="failed to decrypt"):  # ... the AAD is not
        snap.state()
    with pytest.raises(IntegrityError, match="failed to decrypt"):
        codec.decode(forged)


@pytest.mark.parametrize(
    ("schema", "flags", "message"),
    [
        (SCHEMA_VERSION + 1, FLAG_ZSTD | FLAG_ENCRYPTED, "failed to decrypt"),  # schema in AAD
        (SCHEMA_VERSION, FLAG_ZSTD, "failed to decompress"),  # ciphertext read as zstd
    ],
)
def test_re_macked_header_changes_do_not_decrypt(schema: int, flags: int, message: str) -> None:
    codec = CODECS[True]
    session = _session()
    blob = codec.encode(session)
    forged = codec._assemble(session.info, _payload(blob), schema, flags, "k1")
    with pytest.raises(IntegrityError, match=message):
        codec.decode(forged)


def test_key_rotation() -> None:
    session = _session()
    old_blob = CODECS[True].encode(session)
    rotated_ring = RING.rotated("k2")
    rotated = SnapshotCodec(rotated_ring)
    assert rotated.decode(old_blob) == session  # old snapshots keep opening
    assert rotated.read_info(old_blob) == session.info
    new_blob = rotated.encode(session)
    assert parse_header(new_blob).key_id == "k2"
    assert rotated.decode(new_blob) == session
    with pytest.raises(IntegrityError, match="'k2'"):  # a reader without the new key
        CODECS[True].open(new_blob)
    # dropping the old key makes the old snapshots unreadable, with a clear error
    only_new = SnapshotCodec(
        Keyring.from_json(
            json.dumps(
                {"current": "k2", "keys": {"k2": json.loads(rotated_ring.to_json())["keys"]["k2"]}}
            )
        )
    )
    assert only_new.decode(new_blob) == session
    with pytest.raises(IntegrityError, match="'k1'"):
        only_new.open(old_blob)


# -- payload contents under a valid tag --------------------------------------------------
@pytest.mark.parametrize(
    ("state_json", "message"),
    [
        (b"not json", "not valid JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"x": NaN}', "not valid JSON"),
        (b'{"session_state": []}', "does not fit the schema"),
        (b'{"preferences": {"history_limit": "many"}}', "does not fit the schema"),
    ],
)
def test_bad_state_under_a_valid_tag_is_an_integrity_error(state_json: bytes, message: str) -> None:
    for codec in CODECS.values():
        blob = codec.encode_state_json(_session().info, state_json)
        snap = codec.open(blob)  # the record is fine ...
        with pytest.raises(IntegrityError, match=message):
            snap.state()


def test_payload_that_is_not_zstd_is_an_integrity_error() -> None:
    codec = CODECS[False]
    forged = codec._assemble(
        _session().info, b"definitely not zstd", SCHEMA_VERSION, FLAG_ZSTD, "k1"
    )
    with pytest.raises(IntegrityError, match="failed to decompress"):
        codec.decode(forged)
    short = codec._assemble(
        _session().info, b"x" * 20, SCHEMA_VERSION, FLAG_ZSTD | FLAG_ENCRYPTED, "k1"
    )
    with pytest.raises(IntegrityError, match="too short"):
        codec.decode(short)


@pytest.mark.parametrize("version", [1, 2])
def test_malformed_meta_under_a_valid_tag_is_an_integrity_error(version: int) -> None:
    codec = CODECS[False]
    blob = codec.encode(_session())
    h = parse_header(blob)
    meta = json.dumps({"session_id": "../../etc/passwd"}).encode()
    if version == 2:  # sealed as a writer would seal it: the check after decryption holds
        aad = b"|".join((b"STSN-meta", bytes((2, h.flags)), str(h.schema_version).encode(), b"k1"))
        nonce = os.urandom(12)
        meta = nonce + AESGCM(RING.derive("snapshot-meta", "k1")).encrypt(nonce, meta, aad)
    header = struct.pack(
        ">4sBBHBBII", MAGIC, version, h.flags, h.schema_version, 2, 0, len(meta), 0
    )
    head = header + b"k1" + meta
    mac_key = RING.mac_key("k1")
    head_tag = hmac.new(mac_key, b"STSN-head" + head, hashlib.sha256).digest()
    body = head + head_tag
    forged = body + hmac.new(mac_key, body, hashlib.sha256).digest()
    with pytest.raises(IntegrityError, match="metadata is malformed"):
        codec.open(forged)
    with pytest.raises(IntegrityError, match="metadata is malformed"):
        codec.read_info(forged)


# -- size limits (decompression bombs) -----------------------------------------------------
def _big_session() -> Session:
    return _session(blob="a" * 5000)


def test_max_state_bytes_is_enforced_on_encode() -> None:
    small = SnapshotCodec(RING, max_state_bytes=1000)
    with pytest.raises(StateTooLarge) as info:
        small.encode(_big_session())
    assert info.value.details == {"part": "state"}
    with pytest.raises(StateTooLarge):
        small.encode_state_json(_session().info, b"{}" + b" " * 1000)
    small.encode_state_json(_session().info, b"{" + b" " * 998 + b"}")  # exactly at the limit


@pytest.mark.parametrize("encrypt", [True, False])
def test_max_state_bytes_is_enforced_on_decode(encrypt: bool) -> None:
    blob = CODECS[encrypt].encode(_big_session())
    assert len(blob) < 1000  # compresses well: a bomb in miniature
    small = SnapshotCodec(RING, encrypt=encrypt, max_state_bytes=1000)
    snap = small.open(blob)  # the record stays readable
    assert snap.info == _big_session().info
    with pytest.raises(StateTooLarge, match="1000-byte limit"):
        snap.state()
    with pytest.raises(StateTooLarge):
        small.decode(blob)
    exact = len(CODECS[encrypt].open(blob).state_json())
    assert SnapshotCodec(RING, max_state_bytes=exact).decode(blob) == _big_session()
    with pytest.raises(StateTooLarge):
        SnapshotCodec(RING, max_state_bytes=exact - 1).decode(blob)


def test_a_frame_claiming_a_huge_size_is_refused_before_allocating() -> None:
    # a zstd frame header claiming 1 TiB of content, followed by one raw block of 1 byte
    frame = struct.pack("<IBQ", 0xFD2FB528, 0xE0, 2**40) + bytes((9, 0, 0)) + b"{"
    assert zstandard.frame_content_size(frame) == 2**40
    codec = CODECS[False]
    forged = codec._assemble(_session().info, frame, SCHEMA_VERSION, FLAG_ZSTD, "k1")
    with pytest.raises(StateTooLarge, match="1099511627776 bytes"):
        codec.decode(forged)


def test_a_frame_without_content_size_is_bounded_too() -> None:
    state = jsonutil.dumps(to_wire_dict(_big_session().state))
    frame = zstandard.ZstdCompressor(write_content_size=False).compress(state)
    assert zstandard.frame_content_size(frame) == -1
    codec = SnapshotCodec(RING, encrypt=False, max_state_bytes=len(state))
    forged = codec._assemble(_session().info, frame, SCHEMA_VERSION, FLAG_ZSTD, "k1")
    assert codec.decode(forged).state == _big_session().state
    smaller = SnapshotCodec(RING, encrypt=False, max_state_bytes=len(state) - 1)
    with pytest.raises(StateTooLarge):
        smaller.decode(forged)
    truncated = codec._assemble(_session().info, frame[:-4], SCHEMA_VERSION, FLAG_ZSTD, "k1")
    with pytest.raises(IntegrityError, match="failed to decompress"):
        codec.decode(truncated)


# -- schema versions and migrations --------------------------------------------------------
V1_STATE = {
    "session_state": {"workspace": "x := 3 + 4.", "ünï": "日本語"},
    "workspace_context": {"variables": ["x", "y"], "current_workspace": "main"},
    "inspector_state": {"selected_object": "obj_7", "view": "raw"},
    "object_registry": {"obj_7": "a SmallInteger(7)"},
    "preferences": {"theme": "dark", "font_size": 12},
    "metadata": {"client_version": "0.1.0"},
}


@pytest.mark.parametrize("encrypt", [True, False])
def test_schema_1_snapshot_is_migrated_on_load(encrypt: bool) -> None:
    codec = CODECS[encrypt]
    blob = codec.encode_state_json(_session().info, jsonutil.dumps(V1_STATE), schema_version=1)
    snap = codec.open(blob)
    assert snap.schema_version == 1
    assert json.loads(snap.state_json()) == V1_STATE  # stored bytes, as written
    state = snap.state()
    assert state.session_state == V1_STATE["session_state"]
    assert state.current_workspace == "main"
    assert state.workspaces["main"].variables == {"x": None, "y": None}
    assert state.inspectors["inspector-1"].object_id == "obj_7"
    assert state.stale_objects() == ["obj_7"]
    assert state.preferences.extra == {"font_size": 12}
    assert state.metadata.last_client_version == "0.1.0"
    current = json.loads(snap.current_state_json())
    assert current == to_wire(state)


def test_a_temporary_migration_runs_on_load(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pretend this release writes schema N+1: a schema-N snapshot is migrated on load."""
    session = _session(old_name=1, keep=2)
    blob = CODECS[True].encode(session)  # written at the real current schema
    new_version = SCHEMA_VERSION + 1
    calls: list[int] = []

    def rename(data: dict[str, Any]) -> dict[str, Any]:
        calls.append(1)
        ss = dict(data["session_state"])
        ss["new_name"] = ss.pop("old_name")
        return {**data, "session_state": ss}

    monkeypatch.setitem(migrations.MIGRATIONS, SCHEMA_VERSION, rename)
    # the current version is a module constant and migrate()'s default argument
    monkeypatch.setattr(codec_module, "SCHEMA_VERSION", new_version)
    monkeypatch.setattr(migrations.migrate, "__defaults__", (new_version,))
    snap = CODECS[True].open(blob)
    assert snap.schema_version == SCHEMA_VERSION
    assert snap.state().session_state == {"new_name": 1, "keep": 2}
    assert json.loads(snap.current_state_json())["session_state"] == {"new_name": 1, "keep": 2}
    assert json.loads(snap.state_json())["session_state"] == {"old_name": 1, "keep": 2}
    assert CODECS[True].decode(blob).state.session_state == {"new_name": 1, "keep": 2}
    assert calls


def test_migrations_chain_in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(migrations.MIGRATIONS, 10, lambda d: {**d, "trail": [*d["trail"], 10]})
    monkeypatch.setitem(migrations.MIGRATIONS, 11, lambda d: {**d, "trail": [*d["trail"], 11]})
    assert migrations.migrate({"trail": []}, 10, 12) == {"trail": [10, 11]}
    assert migrations.migrate({"trail": []}, 12, 12) == {"trail": []}
    with pytest.raises(IntegrityError, match="no migration from schema version 12"):
        migrations.migrate({"trail": []}, 10, 13)


def test_published_migrations_can_not_be_replaced() -> None:
    with pytest.raises(ValueError, match="already registered"):
        migrations.migration(1)(lambda d: d)
    assert set(migrations.MIGRATIONS) >= set(range(1, SCHEMA_VERSION))


@pytest.mark.parametrize("encrypt", [True, False])
def test_newer_schema_is_refused_clearly(encrypt: bool) -> None:
    codec = CODECS[encrypt]
    future = SCHEMA_VERSION + 1
    blob = codec.encode_state_json(_session().info, b"{}", schema_version=future)
    snap = codec.open(blob)  # the record of a newer snapshot is still readable
    assert snap.info == _session().info
    message = f"schema version {future} is newer than this release supports.*upgrade"
    with pytest.raises(IntegrityError, match=message) as info:
        snap.state()
    assert info.value.details == {"schema_version": future}
    with pytest.raises(IntegrityError, match=message):
        snap.current_state_json()
    with pytest.raises(IntegrityError, match=message):
        codec.decode(blob)


def test_schema_without_a_migration_is_refused() -> None:
    blob = CODECS[True].encode_state_json(_session().info, b"{}", schema_version=0)
    with pytest.raises(IntegrityError, match="no migration from schema version 0"):
        CODECS[True].decode(blob)


# ======================================================================================
# jsonutil
# ======================================================================================
def test_dumps_is_compact_utf8_and_strict() -> None:
    assert jsonutil.dumps({"a": [1, 2.5, None, True], "ü": "✓"}) == (
        '{"a":[1,2.5,null,true],"ü":"✓"}'.encode()
    )
    assert jsonutil.dumps_sorted({"b": 1, "a": 2}) == b'{"a":2,"b":1}'
    for bad in (math.nan, math.inf, -math.inf):
        with pytest.raises(ValueError):
            jsonutil.dumps({"x": bad})
    for literal in ("NaN", "Infinity", "-Infinity"):
        with pytest.raises(ValueError):
            jsonutil.loads(f'{{"x": {literal}}}')


@FAST
@given(json_values())
def test_dumps_loads_roundtrip(value: Any) -> None:
    assert jsonutil.loads(jsonutil.dumps(value)) == value
    jsonutil.check_json_value(value, "v")


@FAST
@given(json_values(), json_values(), json_values(), st.text())
def test_dumps_with_raw_splices_raw_bytes(a: Any, b: Any, plain: Any, user: str) -> None:
    value = {
        "a": RawJSON(jsonutil.dumps(a)),
        "list": [RawJSON(jsonutil.dumps(b)), plain],
        "u": user,
    }
    out = jsonutil.dumps_with_raw(value)
    assert jsonutil.loads(out) == {"a": a, "list": [b, plain], "u": user}
    assert jsonutil.dumps_with_raw({"p": plain}) == jsonutil.dumps({"p": plain})
    assert jsonutil.resolve_raw(value) == {"a": a, "list": [b, plain], "u": user}


@pytest.mark.parametrize(
    "lookalike",
    [
        "\x00raw0123456789abcdef",
        "\\u0000raw0123456789abcdef",
        '"\\u0000raw0123456789abcdef"',
        "\x00raw",
    ],
)
def test_dumps_with_raw_leaves_placeholder_lookalikes_alone(lookalike: str) -> None:
    raw = RawJSON(jsonutil.dumps({"s": "\x00raw0123456789abcdef"}))
    value = {lookalike: lookalike, "raw": raw, "list": [lookalike, raw]}
    out = jsonutil.loads(jsonutil.dumps_with_raw(value))
    inner = {"s": "\x00raw0123456789abcdef"}
    assert out == {lookalike: lookalike, "raw": inner, "list": [lookalike, inner]}


def test_raw_json_repr_hides_contents() -> None:
    raw = RawJSON(b'{"secret":"hunter2"}')
    assert "hunter2" not in repr(raw)
    assert repr(raw) == "RawJSON(<20 bytes>)"
    assert raw.value() == {"secret": "hunter2"}


def _nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"x": math.nan}, "non-finite"),
        ({"x": [math.inf]}, "non-finite"),
        ({"x": -math.inf}, "non-finite"),
        ({1: "a"}, "non-string key"),
        ({"ok": {None: 1}}, "non-string key"),
        ({("a",): 1}, "non-string key"),
        ({"s": {1, 2}}, "set"),
        ({"b": b"bytes"}, "bytes"),
        ({"o": object()}, "object"),
        ({"c": 1j}, "complex"),
        (_nested(jsonutil.MAX_DEPTH + 2), "nested deeper than 200"),
        ({"s": "lone \ud800 surrogate"}, "lone surrogate"),
        ({"key \udfff": 1}, "lone surrogate"),
    ],
)
def test_check_json_value_rejects(value: Any, message: str) -> None:
    with pytest.raises(ValidationError, match=message) as info:
        jsonutil.check_json_value(value, "field")
    assert info.value.details == {"field": "field"}
    assert info.value.message.startswith("field ")


def test_check_json_value_accepts_plain_json() -> None:
    jsonutil.check_json_value(_nested(jsonutil.MAX_DEPTH), "f")
    jsonutil.check_json_value({"a": [1, 2**70, -0.0, 1e308, None, True, "✓ 日本"]}, "f")
    jsonutil.check_json_value(_nested(5), "f", max_depth=5)
    with pytest.raises(ValidationError):
        jsonutil.check_json_value(_nested(6), "f", max_depth=5)


@FAST
@given(json_objects())
def test_checked_values_always_encode(value: dict[str, Any]) -> None:
    jsonutil.check_json_value(value, "v")
    jsonutil.dumps(value)


# ======================================================================================
# ids
# ======================================================================================
def test_new_session_ids() -> None:
    seen = {ids.new_session_id() for _ in range(2000)}
    assert len(seen) == 2000
    for sid in list(seen)[:200]:
        assert sid.startswith("session_")
        token = sid[len("session_") :]
        assert len(token) == 43
        assert set(token) <= set(BASE64URL)
        assert len(base64.urlsafe_b64decode(token + "=")) == 32  # 256 bits of entropy
        assert ids.is_valid_session_id(sid)
        assert ids.check_session_id(sid) == sid


@FAST
@given(session_ids())
def test_generated_session_ids_are_valid(sid: str) -> None:
    assert ids.check_session_id(sid) == sid


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "session_",
        "../../etc/passwd",
        "session_" + "../" * 14 + "x",
        "session_" + "A" * 42 + "/",
        "session_" + "A" * 41 + "..",
        "session_" + "A" * 42,
        "session_" + "A" * 44,
        "session_" + "A" * 43 + "\n",
        "session_" + "A" * 42 + "=",
        "session_" + "A" * 42 + "+",
        "session_" + "A" * 42 + "\x00",
        "Session_" + "A" * 43,
        " session_" + "A" * 43,
        "session_" + "A" * 42 + "é",
    ],
)
def test_malformed_session_ids_are_refused(bad: str) -> None:
    assert not ids.is_valid_session_id(bad)
    with pytest.raises(ValidationError) as info:
        ids.check_session_id(bad)
    assert info.value.message == "session_id is not a valid session id"  # never echoed back


@pytest.mark.parametrize("bad", [None, 42, b"session_" + b"A" * 43, ["session_"]])
def test_non_string_ids_are_refused(bad: Any) -> None:
    assert not ids.is_valid_session_id(bad)
    with pytest.raises(ValidationError, match="must be a string"):
        ids.check_session_id(bad)
    with pytest.raises(ValidationError, match="must be a string"):
        ids.check_client_id(bad)


@FAST
@given(client_ids())
def test_generated_client_ids_are_valid(cid: str) -> None:
    assert ids.check_client_id(cid) == cid
    cid.encode("utf-8")


@pytest.mark.parametrize(
    "good", ["c", "tui-laptop-01", "Ünïcode ✓ 日本", "a b", "x" * 256, "user@host:1"]
)
def test_client_ids_accepted(good: str) -> None:
    assert ids.check_client_id(good, "cid") == good


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("", "must not be empty"),
        ("   ", "must not be empty"),
        ("\t", "must not be empty"),
        ("x" * 257, "longer than 256"),
        ("a\nb", "control characters"),
        ("a\x00b", "control characters"),
        ("a\x1bb", "control characters"),
        ("a\x7fb", "control characters"),
        ("a\ud800b", "lone surrogate"),
    ],
)
def test_client_ids_refused(bad: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message) as info:
        ids.check_client_id(bad, "cid")
    assert info.value.details == {"field": "cid"}


# ======================================================================================
# keys
# ======================================================================================
def test_load_or_create_makes_a_private_key_file(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "keyring.json"
    ring = Keyring.load_or_create(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]
    again = Keyring.load_or_create(path)
    assert again.key_ids == ring.key_ids == [ring.current_id]
    assert again.mac_key(ring.current_id) == ring.mac_key(ring.current_id)
    assert again.enc_key(ring.current_id) == ring.enc_key(ring.current_id)


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o602])
def test_key_files_readable_by_others_are_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "keyring.json"
    Keyring.generate("k1").save(path)
    os.chmod(path, mode)
    with pytest.raises(ConfigurationError, match="chmod 600"):
        Keyring.load(path)
    with pytest.raises(ConfigurationError, match="chmod 600"):
        Keyring.load_or_create(path)


def test_key_file_problems_are_configuration_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="does not exist"):
        Keyring.load(tmp_path / "missing.json")
    target = tmp_path / "real.json"
    Keyring.generate("k1").save(target)
    link = tmp_path / "link.json"
    link.symlink_to(target)
    with pytest.raises(ConfigurationError, match="can not be opened"):
        Keyring.load(link)


SECRET = base64.b64encode(b"S" * 32).decode()


@pytest.mark.parametrize(
    "text",
    [
        "{" + f'"current": "k1", "keys": {{"k1": "{SECRET}"',  # truncated JSON
        json.dumps({"current": "k1", "keys": {"k1": SECRET + "!!"}}),  # not base64
        json.dumps({"current": "k1", "keys": {"k1": SECRET[:-4]}}),  # wrong length
        json.dumps({"current": "k2", "keys": {"k1": SECRET}}),  # current missing
        json.dumps({"keys": {"k1": SECRET}}),  # no current
        json.dumps({"current": "k1", "keys": [SECRET]}),  # keys not an object
        json.dumps({"current": "k1", "keys": {"bad id/..": SECRET}}),  # bad key id
        json.dumps({"current": "k1", "keys": {"k1": [SECRET]}}),
        json.dumps([SECRET]),
        json.dumps({"current": "k1", "keys": {}}),
        SECRET,
    ],
)
def test_from_json_errors_never_include_the_secret(text: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        Keyring.from_json(text)
    rendered = "".join(traceback.format_exception(info.value))
    for shown in (str(info.value), repr(info.value), rendered, repr(info.value.details)):
        assert SECRET not in shown
        assert SECRET[:12] not in shown


def test_from_json_to_json_roundtrip() -> None:
    ring = Keyring({"a": b"a" * 32, "b": b"b" * 32}, "b")
    again = Keyring.from_json(ring.to_json())
    assert again.key_ids == ["a", "b"]
    assert again.current_id == "b"
    assert again.mac_key("a") == ring.mac_key("a")
    assert json.loads(ring.to_json())["version"] == 1


def test_from_env() -> None:
    assert Keyring.from_env({}) is None
    assert Keyring.from_env({ENV_KEYRING: ""}) is None
    ring = Keyring.generate("env-key")
    loaded = Keyring.from_env({ENV_KEYRING: ring.to_json()})
    assert loaded is not None
    assert loaded.current_id == "env-key"
    assert loaded.enc_key("env-key") == ring.enc_key("env-key")
    with pytest.raises(ConfigurationError):
        Keyring.from_env({ENV_KEYRING: "not json " + SECRET})


def test_rotated_keeps_old_keys_and_adds_a_current_one() -> None:
    ring = Keyring.generate("k1")
    rotated = ring.rotated("k2")
    assert rotated.current_id == "k2"
    assert rotated.key_ids == ["k1", "k2"]
    assert rotated.mac_key("k1") == ring.mac_key("k1")
    assert rotated.mac_key("k2") != ring.mac_key("k1")
    assert ring.current_id == "k1"  # the original is unchanged
    assert "k2" not in ring
    auto = rotated.rotated()
    assert auto.current_id.startswith("k") and len(auto.key_ids) == 3
    with pytest.raises(ConfigurationError, match="already exists"):
        rotated.rotated("k1")


def test_repr_never_shows_secrets() -> None:
    secret = b"\x13" * 32
    ring = Keyring({"k1": secret}, "k1")
    for shown in (repr(ring), str(ring)):
        assert shown == "Keyring(current='k1', keys=1)"
        assert base64.b64encode(secret).decode() not in shown
        assert secret.hex() not in shown


def test_derived_keys_follow_the_documented_hkdf_labels() -> None:
    master = bytes(range(32))

    def hkdf(info: bytes) -> bytes:
        return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(master)

    assert RING.mac_key("k1") == hkdf(b"stuisession/v1/hmac-sha256")
    assert RING.enc_key("k1") == hkdf(b"stuisession/v1/aes-256-gcm")
    assert RING.derive("audit") == hkdf(b"stuisession/v1/audit")
    assert len({RING.mac_key("k1"), RING.enc_key("k1"), master}) == 3


@pytest.mark.parametrize(
    ("keys", "current", "message"),
    [
        ({}, "k", "at least one key"),
        ({"k": b"x" * 31}, "k", "must be 32 bytes"),
        ({"bad/id": b"x" * 32}, "bad/id", "invalid key id"),
        ({"k" * 65: b"x" * 32}, "k" * 65, "invalid key id"),
        ({"k": b"x" * 32}, "other", "not in the keyring"),
    ],
)
def test_keyring_validation(keys: dict[str, bytes], current: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        Keyring(keys, current)


def test_generate_makes_distinct_random_keys() -> None:
    a, b = Keyring.generate("k"), Keyring.generate("k")
    assert a.mac_key("k") != b.mac_key("k")
    assert KEY_BYTES == 32


# ======================================================================================
# lifecycle
# ======================================================================================
def _fresh(timeout: int = 100, absolute: int | None = None) -> Session:
    return lifecycle.new_session(
        "client-1", now=T0, timeout=timeout, absolute_lifetime=absolute, session_id=SID_A
    )


def test_new_session() -> None:
    s = _fresh(absolute=1000)
    assert (s.revision, s.status) == (1, SessionStatus.ACTIVE)
    assert s.created_at == s.last_accessed == s.last_modified == T0
    assert s.expires_at == T0 + 100
    assert s.absolute_expires_at == T0 + 1000
    assert s.state == SessionState()
    assert ids.is_valid_session_id(lifecycle.new_session("c", now=T0, timeout=1).session_id)


def test_touch_slides_expiry_and_keeps_revision() -> None:
    s = _fresh()
    t = lifecycle.touch(s, T0 + 50)
    assert t.revision == s.revision
    assert t.last_accessed == T0 + 50
    assert t.expires_at == T0 + 150
    assert t.last_modified == s.last_modified
    assert t.state is s.state
    # works on a bare record too
    info = lifecycle.touch(s.info, T0 + 50)
    assert isinstance(info, SessionInfo)
    assert info.expires_at == T0 + 150


def test_with_state_increments_revision() -> None:
    s = _fresh()
    new_state = SessionState(session_state={"x": 1})
    t = lifecycle.with_state(s, new_state, T0 + 10)
    assert t.revision == s.revision + 1
    assert t.state == new_state
    assert t.last_modified == t.last_accessed == T0 + 10
    assert t.expires_at == T0 + 110


def test_close_is_terminal() -> None:
    s = lifecycle.close(_fresh(), T0 + 5)
    assert s.status is SessionStatus.CLOSED
    assert s.revision == 2
    assert s.last_modified == T0 + 5
    with pytest.raises(SessionClosed):
        lifecycle.close(s, T0 + 6)
    with pytest.raises(SessionClosed):
        lifecycle.touch(s, T0 + 6)
    with pytest.raises(SessionClosed):
        lifecycle.with_state(s, SessionState(), T0 + 6)
    with pytest.raises(SessionClosed):
        lifecycle.require_active(s, T0 + 6)
    with pytest.raises(SessionClosed):
        lifecycle.expire(s, T0 + 500)
    assert not s.is_active(T0 + 6)


def test_expired_sessions_refuse_changes() -> None:
    s = _fresh(timeout=100)
    lifecycle.require_active(s, T0 + 99.9)
    for now in (T0 + 100, T0 + 1e6):
        assert s.is_expired(now)
        with pytest.raises(SessionExpired):
            lifecycle.touch(s, now)
        with pytest.raises(SessionExpired):
            lifecycle.with_state(s, SessionState(), now)
    e = lifecycle.expire(s, T0 + 200)
    assert e.status is SessionStatus.EXPIRED
    assert e.revision == s.revision + 1
    assert e.is_expired(T0)  # status wins over the times
    with pytest.raises(SessionExpired):
        lifecycle.touch(e, T0 + 1)
    with pytest.raises(SessionExpired):
        lifecycle.close(e, T0 + 201)
    with pytest.raises(SessionExpired):
        lifecycle.expire(e, T0 + 201)


def test_absolute_lifetime_caps_sliding_expiry() -> None:
    s = _fresh(timeout=100, absolute=150)
    s = lifecycle.touch(s, T0 + 90)
    assert s.expires_at == T0 + 190
    assert s.time_until_expiry(T0 + 100) == 50
    with pytest.raises(SessionExpired):
        lifecycle.touch(s, T0 + 150)


def test_clock_going_backwards_does_not_shorten_life() -> None:
    s = lifecycle.touch(_fresh(timeout=100), T0 + 50)
    back = lifecycle.touch(s, T0 + 10)
    assert back.expires_at == s.expires_at == T0 + 150
    assert back.last_accessed == s.last_accessed
    changed = lifecycle.with_state(s, SessionState(), T0 + 1)
    assert changed.last_modified >= s.last_modified
    assert changed.expires_at >= s.expires_at
    closed = lifecycle.close(changed, T0 - 100)
    assert closed.last_modified == changed.last_modified


@FAST
@given(
    st.lists(
        st.tuples(st.sampled_from(["touch", "update", "close"]), st.floats(-50, 60)),
        max_size=20,
    )
)
def test_transitions_keep_their_invariants(steps: list[tuple[str, float]]) -> None:
    s = _fresh(timeout=100)
    now = T0
    for op, delta in steps:
        now += delta  # the clock may jump backwards
        before = s
        try:
            if op == "touch":
                s = lifecycle.touch(s, now)
            elif op == "update":
                s = lifecycle.with_state(s, SessionState(session_state={"n": now}), now)
            else:
                s = lifecycle.close(s, now)
        except (SessionClosed, SessionExpired):
            assert not before.is_active(now)
            continue
        assert s.revision == before.revision + (0 if op == "touch" else 1)
        assert s.expires_at >= before.expires_at or op == "close"
        assert s.last_accessed >= before.last_accessed
        assert s.last_modified >= before.last_modified
        assert s.created_at == T0


def test_needs_touch() -> None:
    s = _fresh()
    assert not lifecycle.needs_touch(s, T0 + 59, 60)
    assert lifecycle.needs_touch(s, T0 + 60, 60)
