"""The ``audit`` sub-commands: ``audit verify``."""

from __future__ import annotations

import argparse
from typing import Any

from stuisession.cli._common import (
    EXIT_ERROR,
    EXIT_OK,
    UsageError,
    admin_parents,
    admin_store,
    json_parent,
    print_json,
)


def register_audit(sub: Any) -> None:
    """Add the ``audit`` parser(s) to *sub*."""
    p = sub.add_parser(
        "audit",
        help="check the audit log",
        description="Audit log tools.",
    )
    actions = p.add_subparsers(dest="audit_command", metavar="ACTION", required=True)
    v = actions.add_parser(
        "verify",
        parents=admin_parents(json_parent()),
        help="verify the chain of MACs of the audit log, its head file and the store's anchors",
        description="Verify every line of the audit log (MAC, sequence, chain), its head "
        "file, and, for a file store, the audit anchors in the sessions' high-water marks "
        "(a log rolled back or replaced is caught). Exit 1 at the first bad line.",
    )
    v.add_argument(
        "--log",
        metavar="PATH",
        help="the audit log (default <store>/audit.log; required for a Redis store)",
    )
    v.add_argument(
        "--no-anchors",
        action="store_true",
        help="skip the store's audit anchors (a log that was archived and started anew): "
        "a rolled-back log is then not detected",
    )
    v.set_defaults(handler=cmd_audit_verify, parser=v)


# -- audit ------------------------------------------------------------------------------
def cmd_audit_verify(args: argparse.Namespace) -> int:
    from stuisession.admin import core
    from stuisession.security.audit import verify

    directory = core.store_directory(args.store)
    log_path = args.log or (None if directory is None else str(directory / "audit.log"))
    if log_path is None:
        raise UsageError("give --log for a Redis store (it has no audit log of its own)")
    ring = core.load_keyring(args.key_file, args.store)
    anchors: tuple[tuple[int, str, str], ...] = ()
    damaged: tuple[tuple[str, str], ...] = ()
    if directory is not None and not args.no_anchors:
        store = admin_store(args)
        try:
            found = store.audit_anchors()
        finally:
            store.close()
        anchors, damaged = found.anchors, found.damaged
    report = verify(log_path, ring, anchors=anchors)
    ok = report.ok and not damaged
    if args.json:
        print_json(
            {
                "log": log_path,
                "ok": ok,
                "anchors": len(anchors),
                "damaged_anchors": [{"path": p, "reason": r} for p, r in damaged],
                "lines": report.lines,
                "last_seq": report.last_seq,
                "first_bad_line": report.first_bad_line,
                "reason": report.reason,
                "torn_tail": report.torn_tail,
            }
        )
        return EXIT_OK if ok else EXIT_ERROR
    for path, reason in damaged:
        print(f"FAILED: {path}: {reason}: the audit anchor it holds can not be checked")
    if report.ok:
        torn = (
            "; an incomplete last line (a crash mid-append) was ignored" if report.torn_tail else ""
        )
        checked = f", {len(anchors)} anchor(s) checked" if anchors else ""
        print(
            f"{'OK' if ok else 'FAILED'}: {log_path}: {report.lines} lines verified "
            f"(last seq {report.last_seq}){checked}{torn}"
        )
    elif report.first_bad_line is None:
        print(f"FAILED: {log_path}: {report.reason}")
    else:
        print(f"FAILED: {log_path}: line {report.first_bad_line}: {report.reason}")
    return EXIT_OK if ok else EXIT_ERROR


def register(sub: Any) -> None:
    """Add this module's sub-commands to *sub* (an argparse sub-parsers action)."""
    register_audit(sub)
