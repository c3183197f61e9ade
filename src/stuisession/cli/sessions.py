"""The session sub-commands: ``list``, ``show``, ``export`` and ``import``."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from stuisession.cli._common import (
    EXIT_ERROR,
    EXIT_OK,
    Fail,
    admin_parents,
    admin_store,
    clean,
    iso,
    json_parent,
    kv_table,
    print_json,
    progress,
    progress_parent,
    record_fields,
    short,
    table,
)


def register_list(sub: Any) -> None:
    """Add the ``list`` parser(s) to *sub*."""
    p = sub.add_parser(
        "list",
        parents=admin_parents(json_parent()),
        help="list the stored sessions (records only, never state contents)",
        description="List the sessions of a store: id (shortened), client, created, last "
        "access, snapshot size and state (active, closed, expired). Only records are read.",
    )
    p.add_argument("--client", metavar="ID", help="only the sessions of this client id")
    p.set_defaults(handler=cmd_list, parser=p)


def register_show(sub: Any) -> None:
    """Add the ``show`` parser(s) to *sub*."""
    p = sub.add_parser(
        "show",
        parents=admin_parents(json_parent()),
        help="show one session's record and a summary of its state (no values)",
        description="Show a session's record and counts over its state: never values, "
        "never secrets. The snapshot is read without side effects (no backup fallback).",
    )
    p.add_argument(
        "session_id",
        metavar="SESSION_ID",
        help="the session id, or a unique prefix of 12+ characters as `list` shows it",
    )
    p.set_defaults(handler=cmd_show, parser=p)


def register_export(sub: Any) -> None:
    """Add the ``export`` parser(s) to *sub*."""
    p = sub.add_parser(
        "export",
        parents=admin_parents(json_parent()),
        help="copy every verified snapshot into a directory, with manifest.json",
        description="Copy every verified snapshot (still sealed) into DIR (created 0700) and "
        "write DIR/manifest.json ({session_id: sha256}); every file is 0600. Imports into "
        "any backend that shares the keyring. A previous export in DIR is not overwritten "
        "without --force.",
    )
    p.add_argument("directory", metavar="DIR")
    p.add_argument(
        "--force", action="store_true", help="overwrite a previous export in DIR (its manifest)"
    )
    p.set_defaults(handler=cmd_export, parser=p)


def register_import(sub: Any) -> None:
    """Add the ``import`` parser(s) to *sub*."""
    p = sub.add_parser(
        "import",
        parents=admin_parents(json_parent(), progress_parent()),
        help="load an exported directory into the store",
        description="Check every file of an export against manifest.json and the store's "
        "keyring (nothing is imported if one fails), then create each session; ids already "
        "in the store are skipped.",
    )
    p.add_argument("directory", metavar="DIR")
    p.set_defaults(handler=cmd_import, parser=p)


# -- list -------------------------------------------------------------------------------
def cmd_list(args: argparse.Namespace) -> int:
    from stuisession.admin import core

    store = admin_store(args)
    try:
        now = time.time()
        rows = sorted(
            core.iter_session_rows(store, client_id=args.client),
            key=lambda r: (r[0].created_at, r[0].session_id),
        )
    finally:
        store.close()
    records: list[dict[str, Any]] = [
        {
            "session_id": info.session_id,
            "client_id": info.client_id,
            "created_at": iso(info.created_at),
            "last_accessed": iso(info.last_accessed),
            "size": size,
            "state": core.session_state_name(info, now),
            "revision": info.revision,
        }
        for info, size in rows
    ]
    if args.json:
        print_json({"count": len(records), "sessions": records})
        return EXIT_OK
    if not records:
        print("no sessions")
        return EXIT_OK
    headers = ["SESSION", "CLIENT", "CREATED", "LAST ACCESS", "SIZE", "STATE"]
    lines = [
        [
            short(r["session_id"]),
            r["client_id"],
            r["created_at"],
            r["last_accessed"],
            r["size"],
            r["state"],
        ]
        for r in records
    ]
    print(table(headers, lines, right=[4]))
    counts = {
        s: sum(1 for r in records if r["state"] == s) for s in ("active", "closed", "expired")
    }
    print(
        f"{len(records)} session(s): {counts['active']} active, "
        f"{counts['closed']} closed, {counts['expired']} expired"
    )
    return EXIT_OK


# -- show -------------------------------------------------------------------------------
def cmd_show(args: argparse.Namespace) -> int:
    from stuisession.admin import core
    from stuisession.errors import IntegrityError

    store = admin_store(args)
    try:
        session_id = core.resolve_session_id(store, args.session_id)
        try:
            snap = core.read_snapshot(store, session_id)
            summary = core.summarize_snapshot(snap)
        except IntegrityError as exc:
            raise Fail(
                f"the snapshot failed its check: {exc.message} (run `stuisession verify`; "
                "the bridge falls back to a valid backup when it loads it)"
            ) from None
    finally:
        store.close()
    record = record_fields(snap.info, time.time())
    snapshot = {
        k: summary.pop(k) for k in ("snapshot_bytes", "schema_version", "key_id", "encrypted")
    }
    if args.json:
        print_json({"session": record, "snapshot": snapshot, "summary": summary})
        return EXIT_OK
    print(kv_table(list(record.items())))
    print()
    print(
        kv_table(
            [
                ("snapshot size", f"{snapshot['snapshot_bytes']} bytes"),
                ("schema version", snapshot["schema_version"]),
                ("key id", snapshot["key_id"]),
                ("encrypted", "yes" if snapshot["encrypted"] else "no"),
            ]
        )
    )
    print()
    keys = summary.pop("session_state_keys")
    pairs: list[tuple[str, object]] = [(k.replace("_", " "), v) for k, v in summary.items()]
    pairs.append(("session_state keys", ", ".join(clean(k) for k in keys) if keys else "-"))
    print(kv_table(pairs))
    return EXIT_OK


# -- export / import --------------------------------------------------------------------
def cmd_export(args: argparse.Namespace) -> int:
    from stuisession.admin import core

    previous = Path(args.directory) / "manifest.json"
    if previous.exists() and not args.force:
        raise Fail(
            f"{args.directory} holds a previous export ({previous.name}); "
            "give --force to overwrite it, or choose another directory"
        )
    store = admin_store(args)
    try:
        total = sum(1 for _ in store.ids())
        manifest = core.export_directory(store, args.directory)
    finally:
        store.close()
    missing = max(0, total - len(manifest))
    if args.json:
        print_json(
            {"directory": str(args.directory), "exported": len(manifest), "not_exported": missing}
        )
    else:
        print(f"exported {len(manifest)} sessions to {args.directory} (manifest.json written)")
        if missing:
            print(
                f"{missing} session(s) not exported: their snapshots failed their check or "
                "they were deleted meanwhile (run `stuisession verify`)"
            )
    return EXIT_ERROR if missing else EXIT_OK


def cmd_import(args: argparse.Namespace) -> int:
    from stuisession.admin import core

    store = admin_store(args)
    try:
        total = len(core.read_manifest(args.directory))
        with progress(args, total, "import ") as bar:
            report = core.import_directory(store, args.directory, progress=bar)
    finally:
        store.close()
    if args.json:
        print_json({"total": report.total, "imported": report.imported, "skipped": report.skipped})
    else:
        print(
            f"imported {report.imported} of {report.total} sessions "
            f"({report.skipped} already in the store, skipped); checksums verified"
        )
    return EXIT_OK


def register(sub: Any) -> None:
    """Add this module's sub-commands to *sub* (an argparse sub-parsers action)."""
    register_list(sub)
    register_show(sub)
    register_export(sub)
    register_import(sub)
