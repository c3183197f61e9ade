"""An in-process store: for tests, harnesses and embedding without persistence."""

from __future__ import annotations

import threading
from collections.abc import Iterator

from stuisession.codec.snapshot import SnapshotCodec
from stuisession.errors import ConflictError, SessionNotFound
from stuisession.state.model import SessionInfo
from stuisession.stores.base import SessionStore


class MemoryStore(SessionStore):
    """Keeps sealed snapshots in a dict, guarded by a lock.

    Snapshots go through the same codec as every other store, so a test run on
    ``MemoryStore`` exercises sealing, verification and compare-and-swap exactly
    as the file and Redis stores do.
    """

    def __init__(self, codec: SnapshotCodec | None = None) -> None:
        super().__init__(codec)
        # id -> (cas token, client, blob, revision)
        self._blobs: dict[str, tuple[tuple[int, str], str, bytes, int]] = {}
        #: client id -> its session ids: a create counts the client's sessions without
        #: scanning every stored one
        self._by_client: dict[str, set[str]] = {}
        self._lock = threading.Lock()

    def _get(self, session_id: str) -> bytes | None:
        entry = self._blobs.get(session_id)
        return None if entry is None else entry[2]

    def _put(self, info: SessionInfo, blob: bytes, expected: SessionInfo | None) -> None:
        with self._lock:
            current = self._blobs.get(info.session_id)
            if expected is None:
                if current is not None:
                    raise ConflictError("session already exists", current_revision=current[3])
            elif current is None:
                raise SessionNotFound("Session not found")
            elif current[0] != expected.cas_token:
                raise ConflictError(
                    "session was changed by another writer", current_revision=current[3]
                )
            self._blobs[info.session_id] = (info.cas_token, info.client_id, blob, info.revision)
            if current is None:
                self._by_client.setdefault(info.client_id, set()).add(info.session_id)

    def _delete(self, session_id: str, expected: SessionInfo | None = None) -> bool:
        with self._lock:
            current = self._blobs.get(session_id)
            if current is None or (expected is not None and current[0] != expected.cas_token):
                return False
            del self._blobs[session_id]
            ids = self._by_client.get(current[1])
            if ids is not None:
                ids.discard(session_id)
                if not ids:
                    del self._by_client[current[1]]
            return True

    def _ids(self) -> Iterator[str]:
        with self._lock:
            ids = list(self._blobs)
        return iter(ids)

    def _client_ids(self, client_id: str) -> Iterator[str]:
        with self._lock:
            ids = sorted(self._by_client.get(client_id, ()))
        return iter(ids)

    def corrupt(self, session_id: str, blob: bytes) -> None:
        """Replace a stored snapshot with arbitrary bytes (for corruption tests)."""
        with self._lock:
            token, cid, _, rev = self._blobs[session_id]
            self._blobs[session_id] = (token, cid, blob, rev)
