"""Every damaged byte of the audit trail is detected by ``stuisession audit verify``.

The fixture is a file store with one session and an audit log of a dozen
sealed lines (create, updates, restores, a denial), its head file, and the
audit anchor (the session's high-water mark, which records the log's
position). Each case damages one of those three files (one bit flipped, or
the file cut at a length) and runs ``stuisession audit verify --store``:
it must exit non-zero. Outcomes are counted and printed; any exit 0 is a
silent outcome and fails the test.

The quick profile (``make test``) flips one bit (bit ``offset % 8``) of every
third byte and cuts each file at every third length (every bit position
is hit, as 3 and 8 are coprime); ``$STUISESSION_FAULT_ITERATIONS``
(``make faults``) flips all eight bits of every byte and cuts at every length,
over a longer log.
"""

from __future__ import annotations

import collections
import contextlib
import io
import logging
import os
from pathlib import Path
from typing import Any

import pytest

from store_helpers import call_ok as _call
from store_helpers import no_env_keyring as _no_env_keyring  # noqa: F401 (autouse)
from stuisession import FileStore, ManualClock, Policy, ProtocolHandler, SessionService
from stuisession.cli.app import build_parser, main
from stuisession.errors import StuiSessionError
from stuisession.security.audit import AuditLog
from stuisession.stores.file.layout import session_stem

FULL = bool(int(os.environ.get("STUISESSION_FAULT_ITERATIONS", "0") or 0))
STRIDE = 1 if FULL else 3
UPDATES = 4 if FULL else 2
OPTIONS: dict[str, Any] = {"fsync": False, "lock_stripes": 1, "backups": 1, "cache_bytes": 0}


@pytest.fixture(scope="module")
def trail(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, bytes]]:
    """The store directory and the pristine bytes of the log, its head and the anchor."""
    root = tmp_path_factory.mktemp("audit-sweep")
    store = FileStore(root, **OPTIONS)
    audit = AuditLog(root / "audit.log", keyring=store.codec.keyring, fsync=False)
    clock = ManualClock()
    service = SessionService(store, Policy(audit_updates=True), clock=clock, audit=audit)
    h = ProtocolHandler(service=service)
    sid = _call(h, "create_session", client_id="c")["session_id"]
    for i in range(UPDATES):
        changes = {"workspaces": {"default": {"variables": {"v": i}}}}
        _call(h, "update_session_state", session_id=sid, changes=changes)
        clock.advance(120)  # the restore records an access: another anchored write
        _call(h, "restore_session", session_id=sid)
    audit.record("deny", client_id="mallory", outcome="denied", reason="wrong token")
    changes = {"workspaces": {"default": {"variables": {"last": 1}}}}
    _call(h, "update_session_state", session_id=sid, changes=changes)  # anchors the denial
    store.close()
    stem = session_stem(root, sid)
    names = ["audit.log", "audit.log.head", os.path.join("sessions", stem[:2], f"{stem}.hwm")]
    assert _audit_verify(root) == 0  # the pristine trail verifies, with its anchor
    return root, {n: (root / n).read_bytes() for n in names}


_PARSED: dict[Path, Any] = {}


def _audit_verify(root: Path) -> int:
    """``stuisession audit verify --store root``: its exit code, as ``main`` returns it.

    The command line is parsed once (building the parser costs more than the
    check); an error the command raises exits 1 under ``main``.
    """
    if root not in _PARSED:
        with contextlib.redirect_stdout(io.StringIO()):
            assert main(["audit", "verify", "--store", str(root)]) in {0, 1}
        _PARSED[root] = build_parser().parse_args(["audit", "verify", "--store", str(root)])
    args = _PARSED[root]
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            code: int = args.handler(args)
        except StuiSessionError:
            code = 1
    return code


def _sweep(trail: tuple[Path, dict[str, bytes]], *, flips: bool) -> None:
    root, files = trail
    results: collections.Counter[str] = collections.Counter()
    silent: list[str] = []
    logging.disable(logging.CRITICAL)
    try:
        for name, data in files.items():
            if flips:
                cases = [
                    (f"flip {off}.{bit}", off, bit)
                    for off in range(0, len(data), STRIDE)
                    for bit in (range(8) if FULL else (off % 8,))
                ]
            else:
                cases = [(f"cut {n}", n, -1) for n in range(0, len(data), STRIDE)]
            for what, off, bit in cases:
                if bit < 0:
                    damaged = data[:off]
                else:
                    buf = bytearray(data)
                    buf[off] ^= 1 << bit
                    damaged = bytes(buf)
                (root / name).write_bytes(damaged)
                try:
                    code = _audit_verify(root)
                finally:
                    (root / name).write_bytes(data)
                kind = os.path.basename(name).rpartition(".")[2]
                outcome = "detected" if code != 0 else "SILENT"
                results[f"{kind}: {outcome}"] += 1
                if code == 0:
                    silent.append(f"{name}: {what}")
    finally:
        logging.disable(logging.NOTSET)
    print(
        f"\naudit {'flip' if flips else 'truncation'} sweep: {sum(results.values())} cases, "
        f"{dict(sorted(results.items()))}, silent: {len(silent)}"
    )
    assert _audit_verify(root) == 0  # restored: the sweep left nothing behind
    assert not silent, f"{len(silent)} silent outcomes, e.g. {silent[:10]}"


def test_every_flipped_bit_of_the_audit_trail_is_detected(
    trail: tuple[Path, dict[str, bytes]],
) -> None:
    _sweep(trail, flips=True)


def test_every_truncation_of_the_audit_trail_is_detected(
    trail: tuple[Path, dict[str, bytes]],
) -> None:
    _sweep(trail, flips=False)
