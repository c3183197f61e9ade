"""Golden snapshots: files written by earlier releases keep loading, unchanged in meaning.

``tests/fixtures/snapshots/v<schema>-*.snap`` were written once by the code of
that schema version (``tests/fixtures/make_golden.py``), sealed with the
TEST-ONLY key in ``tests/fixtures/golden-keyring.json``;
``v<schema>-expected.json`` holds the record and the stored state of each.

These files are frozen. They must keep loading in every later version of
stuisession: never regenerate or edit them, and never delete a migration that
they need. If a test here fails, a change broke backward compatibility of the
snapshot format. When the schema version changes, add the goldens of the new
version (run ``make_golden.py``) beside the old ones. The schema-1 files,
written by the schema-1 code, are checked by ``test_golden_schema1.py``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import attrs
import pytest

from stuisession.codec.snapshot import FLAG_ENCRYPTED, FLAG_ZSTD, SnapshotCodec, parse_header
from stuisession.errors import IntegrityError
from stuisession.keys import Keyring
from stuisession.state.forms import structure_info, unstructure_info
from stuisession.state.migrations import migrate
from stuisession.state.model import SCHEMA_VERSION
from stuisession.state.schema import from_wire, to_wire

FIXTURES = Path(__file__).parent / "fixtures"
SNAPSHOTS = FIXTURES / "snapshots"
# git does not keep file modes, so the test-only key is read as text, not as a key file
RING = Keyring.from_json((FIXTURES / "golden-keyring.json").read_text())
CODEC = SnapshotCodec(RING)


def _load_expected() -> dict[str, dict[str, Any]]:
    expected: dict[str, dict[str, Any]] = {}
    for path in sorted(SNAPSHOTS.glob("v*-expected.json")):
        expected.update(json.loads(path.read_text(encoding="utf-8")))
    return expected


EXPECTED = _load_expected()


def test_the_golden_key_is_the_public_test_key() -> None:
    secret = hashlib.sha256(b"stuisession golden fixtures: PUBLIC TEST-ONLY KEY").digest()
    assert RING.key_ids == ["golden-test-only"]
    assert RING.mac_key("golden-test-only") == Keyring({"x": secret}, "x").mac_key("x")


def test_every_golden_file_is_listed() -> None:
    assert EXPECTED, "no golden snapshots found"
    on_disk = {p.name for p in SNAPSHOTS.glob("*.snap")}
    assert on_disk == set(EXPECTED)


def test_the_current_schema_has_goldens() -> None:
    """Bumping SCHEMA_VERSION needs goldens of the new version (run make_golden.py)."""
    assert (SNAPSHOTS / f"v{SCHEMA_VERSION}-expected.json").exists()
    assert all(exp["schema_version"] <= SCHEMA_VERSION for exp in EXPECTED.values())


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_golden_snapshot_loads(name: str) -> None:
    exp = EXPECTED[name]
    blob = (SNAPSHOTS / name).read_bytes()
    record = exp["record"]
    header = parse_header(blob)
    assert header.format_version == exp["format_version"]
    assert header.schema_version == exp["schema_version"]
    assert header.key_id == exp["key_id"]
    assert bool(header.flags & FLAG_ENCRYPTED) is exp["encrypted"]
    assert header.flags & FLAG_ZSTD

    # the record, through the head tag alone and through the full tag
    info = CODEC.read_info(blob, expected_session_id=record["session_id"])
    # records written before record versions existed load as version 0 on no
    # known history (lineage ""); their first write versions them and names it
    assert unstructure_info(info) == {"version": 0, "lineage": "", "applied": [], **record}
    assert info == structure_info(record)
    snap = CODEC.open(blob, expected_session_id=record["session_id"])
    assert snap.info == info
    assert snap.schema_version == exp["schema_version"]

    # the state as stored, byte-for-byte the same JSON value
    assert json.loads(snap.state_json()) == exp["state"]

    # the state as this release reads it (migrated if the golden is older)
    session = snap.session()
    assert session.info == info
    if exp["schema_version"] == SCHEMA_VERSION:
        assert to_wire(session.state) == exp["state"]
        assert json.loads(snap.current_state_json()) == exp["state"]
    else:
        migrated = from_wire(migrate(exp["state"], exp["schema_version"]))
        assert session.state == migrated
        assert json.loads(snap.current_state_json()) == to_wire(migrated)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_golden_snapshot_is_upgraded_on_write(name: str) -> None:
    """Re-sealing a golden with a rotated key and the current schema keeps its contents."""
    session = CODEC.decode((SNAPSHOTS / name).read_bytes())
    rotated = SnapshotCodec(RING.rotated("after-golden"))
    blob = rotated.encode(session)
    assert parse_header(blob).schema_version == SCHEMA_VERSION
    assert parse_header(blob).key_id == "after-golden"
    assert rotated.decode(blob) == session
    touched = attrs.evolve(session.info, revision=session.revision + 1)
    rewritten = CODEC.rewrite_info(CODEC.open((SNAPSHOTS / name).read_bytes()), touched)
    assert CODEC.decode(rewritten).state == session.state
    assert CODEC.read_info(rewritten) == touched


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_golden_snapshot_is_really_verified(name: str) -> None:
    blob = (SNAPSHOTS / name).read_bytes()
    middle = parse_header(blob).payload_offset + 1
    bad = blob[:middle] + bytes([blob[middle] ^ 0x01]) + blob[middle + 1 :]
    with pytest.raises(IntegrityError):
        CODEC.open(bad)
    with pytest.raises(IntegrityError, match="not in the keyring"):
        SnapshotCodec(Keyring.generate("someone-else")).open(blob)
    with pytest.raises(IntegrityError, match="another session"):
        CODEC.open(blob, expected_session_id="session_" + "Z" * 43)
