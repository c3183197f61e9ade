"""Every damaged byte is detected: a bit-flip and truncation sweep over a file store.

The fixture is one session with a snapshot, a backup, a journal of three
acknowledged records and its high-water mark, plus the store's
``keyring.json`` and ``format.json``. Each case damages one file (one bit
flipped, or the file cut at a length), then checks, with fresh store
instances:

* ``verify`` reports a problem (or opening the store is refused with a
  ``ConfigurationError`` naming the file): the damage is never invisible;
* a load either fails, or returns a genuine acknowledged state: the newest
  one, or an older one only when the store reported the rollback (a note and
  an ERROR, ``FileStore.rollbacks()``) -- never an older state silently, and
  never a state that was not acknowledged.

The quick profile (``make test``) flips one bit (bit ``offset % 8``) of every
seventh byte and cuts every file at every seventh length, so every bit
position and every field of every file is hit; ``$STUISESSION_FAULT_ITERATIONS``
(``make faults``) flips all eight bits of every byte and cuts at every length.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
from pathlib import Path
from typing import Any

import pytest

from store_helpers import call_ok as _call
from store_helpers import no_env_keyring as _no_env_keyring  # noqa: F401 (autouse)
from stuisession import FileStore, ManualClock, Policy, ProtocolHandler
from stuisession.errors import ConfigurationError, IntegrityError, SessionNotFound
from stuisession.stores.file.layout import session_stem

FULL = bool(int(os.environ.get("STUISESSION_FAULT_ITERATIONS", "0") or 0))
STRIDE = 1 if FULL else 7
OPTIONS: dict[str, Any] = {"fsync": False, "lock_stripes": 1, "backups": 1, "cache_bytes": 0}


def _variables(store: FileStore, sid: str) -> tuple[int, dict[str, Any]]:
    session = store.load(sid)
    ws = session.state.workspaces.get("default")
    return session.revision, dict(ws.variables) if ws is not None else {}


@pytest.fixture(scope="module")
def pristine(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, str, dict[int, dict[str, Any]]]:
    """The store's files, the session id and every acknowledged state by revision."""
    root = tmp_path_factory.mktemp("sweep")
    store = FileStore(root, **OPTIONS)
    h = ProtocolHandler(store, Policy(), clock=ManualClock())
    sid = _call(h, "create_session", client_id="c")["session_id"]
    acked = {store.load(sid).revision: {}}

    def update(name: str, value: int) -> None:
        changes = {"workspaces": {"default": {"variables": {name: value}}}}
        _call(h, "update_session_state", session_id=sid, changes=changes)
        rev, found = _variables(store, sid)
        acked[rev] = found

    update("a", 1)
    store.load_snapshot(sid)  # compaction: the snapshot gets a backup
    for i, name in enumerate("bcd"):
        update(name, i)
    assert store.journal_records(sid) == 3
    return root, sid, acked


def _walk(root: Path) -> dict[str, os.stat_result]:
    found = {}
    for dirpath, _, names in os.walk(root):
        for n in names:
            if not n.endswith(".lock"):
                path = os.path.join(dirpath, n)
                found[os.path.relpath(path, root)] = os.stat(path)
    return found


class Pristine:
    """The fixture's files; :meth:`reset` rewrites only what a case changed."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = {rel: (root / rel).read_bytes() for rel in _walk(root)}
        self.stats = _walk(root)

    def reset(self) -> None:
        now = _walk(self.root)
        for rel in now.keys() - self.data.keys():
            os.unlink(self.root / rel)
        for rel, data in self.data.items():
            st, old = now.get(rel), self.stats[rel]
            if st is None or (st.st_ino, st.st_size, st.st_mtime_ns) != (
                old.st_ino,
                old.st_size,
                old.st_mtime_ns,
            ):
                path = self.root / rel
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                path.write_bytes(data)
                os.chmod(path, 0o600)
                self.stats[rel] = os.stat(path)


def _targets(stem: str, files: dict[str, bytes]) -> list[str]:
    names = [f for f in files if os.path.basename(f).startswith(stem) and not f.endswith(".ref")]
    names += ["keyring.json", "format.json"]
    kinds = {os.path.basename(n).removeprefix(stem) or n for n in names}
    assert kinds >= {".snap", ".snap.1", ".jnl", ".hwm", "keyring.json", "format.json"}, kinds
    return sorted(names)


def _outcome(root: Path, sid: str, acked: dict[int, dict[str, Any]]) -> str:
    """One damaged store: 'detected-error', 'detected-latest', 'detected-older', or a failure."""
    try:
        checker = FileStore(root, **OPTIONS)
    except ConfigurationError:
        return "refused"  # serve and verify stop with a message naming the file
    if not list(checker.verify()):
        return "UNDETECTED"
    store = checker  # verify only reads: the same instance loads
    try:
        rev, found = _variables(store, sid)
    except (IntegrityError, SessionNotFound):
        return "error"
    if acked.get(rev) != found:
        return "FORGED"
    if rev == max(acked):
        return "latest"
    if store.rollbacks() or store.quarantined():
        return "older-reported"
    return "SILENT"


def _sweep(pristine: tuple[Path, str, dict[int, dict[str, Any]]], *, flips: bool) -> None:
    root, sid, acked = pristine
    saved = Pristine(root)
    files = saved.data
    results: collections.Counter[str] = collections.Counter()
    bad: list[str] = []
    logging.disable(logging.CRITICAL)  # thousands of expected ERROR reports
    try:
        for name in _targets(session_stem(root, sid), files):
            data = files[name]
            cases: list[tuple[str, bytes]] = []
            if flips:
                for off in range(0, len(data), STRIDE):
                    for bit in range(8) if FULL else (off % 8,):
                        damaged = bytearray(data)
                        damaged[off] ^= 1 << bit
                        cases.append((f"flip {off}.{bit}", bytes(damaged)))
            else:
                cases = [(f"cut {n}", data[:n]) for n in range(0, len(data), STRIDE)]
            for what, damaged in cases:
                saved.reset()
                (root / name).write_bytes(damaged)
                outcome = _outcome(root, sid, acked)
                results[outcome] += 1
                if outcome.isupper():
                    bad.append(f"{name.replace(sid, '<sid>')}: {what}: {outcome}")
    finally:
        logging.disable(logging.NOTSET)
        saved.reset()
    print(
        f"\n{'flip' if flips else 'truncation'} sweep: {sum(results.values())} cases, {dict(results)}"
    )
    assert not bad, f"{len(bad)} silent outcomes, e.g. {bad[:10]}"


def test_every_flipped_bit_is_detected_and_never_served_silently(
    pristine: tuple[Path, str, dict[int, dict[str, Any]]],
) -> None:
    _sweep(pristine, flips=True)


def test_every_truncation_is_detected_and_never_served_silently(
    pristine: tuple[Path, str, dict[int, dict[str, Any]]],
) -> None:
    _sweep(pristine, flips=False)
