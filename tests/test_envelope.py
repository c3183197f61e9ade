"""The one sealing envelope: snapshots and journal records refuse oversized payloads alike."""

from __future__ import annotations

import os

import pytest
import zstandard

from stuisession.codec import _envelope, journal
from stuisession.codec.snapshot import SnapshotCodec
from stuisession.errors import IntegrityError, StateTooLarge, StuiSessionError
from stuisession.keys import Keyring
from stuisession.state.model import SessionInfo

NOW = 1_700_000_000.0
SID = "session_" + "A" * 43
# 50 KB of JSON that zstd cannot shrink below the 1000-byte limit
PAYLOAD = b'{"x":"' + os.urandom(25_000).hex().encode() + b'"}'


def _info(revision: int) -> SessionInfo:
    return SessionInfo(
        session_id=SID,
        client_id="c",
        created_at=NOW,
        last_accessed=NOW,
        last_modified=NOW,
        expires_at=NOW + 60,
        timeout=60,
        revision=revision,
    )


def _refusal(fn: object) -> StuiSessionError:
    assert callable(fn)
    with pytest.raises(StuiSessionError) as info:
        fn()
    return info.value


@pytest.mark.parametrize("encrypt", [True, False])
def test_oversized_payload_refused_alike_by_snapshot_and_journal(encrypt: bool) -> None:
    keyring = Keyring.generate()
    writer = SnapshotCodec(keyring, encrypt=encrypt)  # a writer with a larger limit
    reader = SnapshotCodec(keyring, encrypt=encrypt, max_state_bytes=1000)
    assert len(PAYLOAD) > 50_000

    blob = writer.encode_state_json(_info(1), PAYLOAD)
    snap = reader.open(blob, SID)  # the record is readable; the state is not
    base = journal.snapshot_tag(blob)
    data = journal.header(base) + journal.seal(
        writer, _info(2), kind=journal.KIND_UPDATE, base_tag=base, prev_tag=base, payload=PAYLOAD
    )

    from_snapshot = _refusal(snap.state_json)
    from_journal = _refusal(
        lambda: journal.open_journal(reader, data, base_tag=base, session_id=SID)
    )

    assert type(from_snapshot) is StateTooLarge
    assert type(from_journal) is StateTooLarge
    assert from_snapshot.error_code == from_journal.error_code == "StateTooLarge"
    assert from_snapshot.error_type == from_journal.error_type == "SessionError"
    assert str(from_snapshot) == str(from_journal)
    assert str(len(PAYLOAD)) in str(from_snapshot)  # the declared size, checked up front


def test_decompression_is_bounded_when_the_frame_declares_no_size() -> None:
    frame = zstandard.ZstdCompressor(write_content_size=False).compress(PAYLOAD)
    assert zstandard.frame_content_size(frame) == -1
    with pytest.raises(StateTooLarge, match="over the 1000-byte limit"):
        _envelope.decompress(frame, 1000, what="test payload")
    assert _envelope.decompress(frame, len(PAYLOAD), what="test payload") == PAYLOAD


def test_decompression_of_garbage_is_an_integrity_error() -> None:
    with pytest.raises(IntegrityError, match="test payload failed to decompress"):
        _envelope.decompress(b"not zstd at all", 1000, what="test payload")


def test_uncompressed_oversized_payload_is_refused() -> None:
    with pytest.raises(StateTooLarge):
        _envelope.check_size(1001, 1000)
    _envelope.check_size(1000, 1000)
