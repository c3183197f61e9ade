"""Bringing a file store of format version 1-3 to version 4 (run once, on open).

Split out of :mod:`.store`; :class:`~stuisession.stores.file.store.FileStore`
runs :class:`Migration` from its constructor when ``format.json`` asks for it.
"""

from __future__ import annotations

import contextlib
import logging
import os

import attrs

from stuisession.codec.snapshot import SnapshotCodec
from stuisession.errors import ConfigurationError, IntegrityError, SessionNotFound
from stuisession.stores.file.atomic import FileWriter
from stuisession.stores.file.cache import HeadCache
from stuisession.stores.file.format_file import StoreFormat
from stuisession.stores.file.journal import HeadReader, JournalWriter
from stuisession.stores.file.layout import (
    NAME_PURPOSE,
    REF_SUFFIX,
    ClientIndex,
    Layout,
    SessionPaths,
    session_name,
    storage_error,
)
from stuisession.stores.file.locking import StripeLocks

log = logging.getLogger("stuisession.stores.file")


@attrs.define
class Migration:
    """The parts of one :class:`FileStore` that a format migration works with."""

    codec: SnapshotCodec
    layout: Layout
    locks: StripeLocks
    cache: HeadCache
    writer: FileWriter
    reader: HeadReader
    jw: JournalWriter
    index: ClientIndex

    def run(self, fmt: StoreFormat, *, fsync: bool) -> None:
        """Bring a store of version 1-3 to version 4.

        Versions 1/2 first get a high-water mark per session (version 3); then
        every session's files are renamed from its id to its keyed file name
        (version 4), one session at a time under its lock, the snapshot last,
        so a crash part-way is finished by the next open. format.json is
        rewritten last.
        """
        if fmt.version < 3:
            self._mark_all(fmt)
        name_kid = self.codec.keyring.current_id
        layout = self.layout
        for sid in list(layout.iter_legacy_ids()):
            try:
                self._rename_session(sid, name_kid)
            except OSError as exc:
                raise storage_error("rename a session's files", exc) from exc
        layout.write_format(attrs.evolve(fmt, name_kid=name_kid), self.codec.keyring, fsync=fsync)
        layout.set_names(attrs.evolve(fmt, name_kid=name_kid), self.codec.keyring)
        log.info("file store: migrated %s from format version %d", self.layout.root, fmt.version)

    def _mark_all(self, fmt: StoreFormat) -> None:
        """Version 1/2 -> 3: a high-water mark per session (files still named by ids)."""
        if self.layout.has_marks():
            raise ConfigurationError(
                f"{self.layout.format_file} says store format version {fmt.version}, but the "
                "sessions have high-water marks (version 3): an older copy of format.json was "
                "put back; restore the current one from a backup of the store"
            )
        self.reader.marks = False
        try:
            for sid in list(self.layout.iter_legacy_ids()):
                p = self.layout.legacy_paths(sid)
                try:
                    with self.locks.locked(sid):
                        revision = self.reader.head(p, decode=False, locked=True).info.revision
                        self.jw.mark(p, revision)
                except (SessionNotFound, IntegrityError):
                    continue  # verify reports it; its first read settles the missing mark
                except OSError as exc:
                    raise storage_error("write a high-water mark", exc) from exc
        finally:
            self.reader.marks = True

    def _rename_session(self, sid: str, name_kid: str) -> None:
        """Rename *sid*'s files (and quarantine copies) to its format-4 names; OSError."""
        layout = self.layout
        fs = layout.fs
        old = layout.legacy_paths(sid)
        stem = session_name(self.codec.keyring.derive(NAME_PURPOSE, name_kid), sid)
        new = SessionPaths(layout.sessions_dir, sid, stem)
        with self.locks.locked(sid):
            client_id: str | None = None
            with contextlib.suppress(SessionNotFound, IntegrityError):
                client_id = self.reader.read_info(old, locked=True).client_id
            self.cache.drop(sid)
            moves = [(old.journal, new.journal), (old.hwm, new.hwm)]
            moves += [
                (path, new.dir + path[len(old.dir) + len(sid) :])
                for path in layout.backup_files(old)
            ]
            for path in layout.quarantine_files(sid, sid):
                moves.append(
                    (
                        path,
                        os.path.join(
                            layout.quarantine_dir, stem + os.path.basename(path)[len(sid) :]
                        ),
                    )
                )
            shard = self.index.shard(client_id) if client_id is not None else None
            old_marker = (
                None if shard is None else os.path.join(layout.shard_dir(shard), sid + REF_SUFFIX)
            )
            if shard is not None:
                # every session has a marker from format 4 on (names are not placed)
                self.writer.write_marker(os.path.join(layout.shard_dir(shard), stem + REF_SUFFIX))
            moves.append((old.current, new.current))  # last: the session is migrated once it moves
            for src, dst in moves:
                if not fs.lexists(os.path.dirname(dst)):
                    self.writer.make_shard(os.path.dirname(dst))
                with contextlib.suppress(FileNotFoundError):
                    fs.replace(src, dst)
            if old_marker is not None:
                with contextlib.suppress(FileNotFoundError):
                    fs.unlink(old_marker)
            for d in {old.dir, new.dir, layout.quarantine_dir}:
                self.writer.fsync_dir(d)
