"""The store maintenance sub-commands: ``verify`` and ``gc``."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from stuisession.cli._common import (
    EXIT_ERROR,
    EXIT_OK,
    DeferredInterrupt,
    UsageError,
    admin_audit,
    admin_parents,
    admin_store,
    audit_option,
    iso,
    json_parent,
    positive_int,
    print_json,
    progress,
    progress_parent,
    short,
    table,
)
from stuisession.errors import StuiSessionError


def register_verify(sub: Any) -> None:
    """Add the ``verify`` parser(s) to *sub*."""
    p = sub.add_parser(
        "verify",
        parents=admin_parents(json_parent(), progress_parent()),
        help="check every snapshot (and every backup of a file store) fully",
        description="Check every snapshot fully (tags, decryption, decompression, schema); "
        "in a file store every backup <id>.snap.N too. Reads only. Exit 1 if any fails.",
    )
    p.set_defaults(handler=cmd_verify, parser=p)


def register_gc(sub: Any) -> None:
    """Add the ``gc`` parser(s) to *sub*."""
    p = sub.add_parser(
        "gc",
        parents=admin_parents(json_parent()),
        help="delete expired, closed and past-retention sessions",
        description="Run the expiry sweep once: delete closed and expired sessions and "
        "those idle longer than the retention. Ctrl-C stops between sessions (exit 130).",
    )
    p.add_argument("--dry-run", action="store_true", help="only list what would be deleted")
    p.add_argument(
        "--timeout",
        type=positive_int,
        metavar="SECONDS",
        help="the policy's idle timeout (default 3600, lowered to --retention if above it); "
        "sessions keep the timeout they were created with",
    )
    p.add_argument(
        "--retention",
        type=positive_int,
        metavar="SECONDS",
        help="delete sessions idle longer than this whatever their timeout (default 30 days)",
    )
    audit_option(p)
    p.set_defaults(handler=cmd_gc, parser=p)


# -- verify -----------------------------------------------------------------------------
def cmd_verify(args: argparse.Namespace) -> int:
    store = admin_store(args)
    try:
        # a file store lists its backup files too (generation > 0)
        items = store.verify_items()
        total = len(items)
        snapshots = sum(1 for f in items if f.generation == 0)
        with progress(args, total, "verify ") as bar:
            problems = list(store.verify(items, progress=bar))
    finally:
        store.close()
    backups = total - snapshots
    if args.json:
        print_json(
            {
                "ok": not problems,
                "checked": total,
                "snapshots": snapshots,
                "backups": backups,
                "failures": [
                    {"path": p.path, "session_id": p.session_id, "reason": p.reason}
                    for p in problems
                ],
            }
        )
    else:
        for p in problems:
            session = f" (session {p.session_id})" if p.path else ""
            print(f"BAD {p.path or p.session_id}: {p.reason}{session}")
        verdict = f"{len(problems)} bad" if problems else "all OK"
        print(f"checked {total} files ({snapshots} snapshots, {backups} backups): {verdict}")
    return EXIT_ERROR if problems else EXIT_OK


# -- gc ---------------------------------------------------------------------------------
def _gc_policy(args: argparse.Namespace) -> Any:
    from stuisession.policy import Policy

    fields: dict[str, Any] = {}
    if args.retention is not None:
        fields["retention"] = args.retention
    if args.timeout is not None:
        fields["session_timeout"] = args.timeout
    elif args.retention is not None:
        fields["session_timeout"] = min(Policy().session_timeout, args.retention)
    try:
        return Policy(**fields)
    except StuiSessionError as exc:
        raise UsageError(exc.message) from None


def cmd_gc(args: argparse.Namespace) -> int:
    from stuisession.service.core import SessionService
    from stuisession.state.model import SessionStatus

    policy = _gc_policy(args)
    store = admin_store(args)
    try:
        audit = None if args.dry_run else admin_audit(args, store)
        service = SessionService(store, policy, audit=audit)
        if args.dry_run:
            return _gc_dry_run(args, service, SessionStatus.CLOSED)
        examined = removed = 0
        interrupted = False
        with DeferredInterrupt() as stop:
            try:
                while True:
                    if stop.requested:
                        interrupted = True
                        break
                    step = service.sweep_step(max_items=1)
                    examined += step.scanned
                    removed += step.removed
                    if step.done:
                        break
            except KeyboardInterrupt:  # not in the main thread, or a second signal
                interrupted = True
        if audit is not None:
            note = " (interrupted)" if interrupted else ""
            try:
                audit.record("gc", reason=f"removed {removed} of {examined} examined{note}")
            except Exception as exc:
                print(f"warning: could not append to the audit log: {exc}", file=sys.stderr)
    finally:
        store.close()
    if args.json:
        print_json({"removed": removed, "examined": examined, "interrupted": interrupted})
    elif interrupted:
        print(
            f"interrupted after examining {examined} sessions; removed {removed} "
            "(every delete is atomic: the store is consistent)"
        )
    else:
        print(f"removed {removed} sessions (examined {examined})")
    return 130 if interrupted else EXIT_OK


def _gc_dry_run(args: argparse.Namespace, service: Any, closed: Any) -> int:
    items = []
    for info in service.iter_sweepable():
        now = time.time()
        if info.status is closed:
            reason = "closed"
        elif info.is_expired(now):
            reason = "expired"
        else:
            reason = "retention"
        items.append(
            {
                "session_id": info.session_id,
                "client_id": info.client_id,
                "last_accessed": iso(info.last_accessed),
                "reason": reason,
            }
        )
    if args.json:
        print_json({"dry_run": True, "would_remove": len(items), "sessions": items})
        return EXIT_OK
    if items:
        headers = ["SESSION", "CLIENT", "LAST ACCESS", "REASON"]
        rows = [
            [short(i["session_id"]), i["client_id"], i["last_accessed"], i["reason"]] for i in items
        ]
        print(table(headers, rows))
    print(f"dry run: would remove {len(items)} sessions")
    return EXIT_OK


def register(sub: Any) -> None:
    """Add this module's sub-commands to *sub* (an argparse sub-parsers action)."""
    register_verify(sub)
    register_gc(sub)
