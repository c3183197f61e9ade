"""The ``audit`` sub-commands: ``audit verify``."""

from __future__ import annotations

import argparse
from typing import Any

from stuisession.cli._common import (
    EXIT_ERROR,
    EXIT_OK,
    UsageError,
    admin_parents,
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
        help="verify the chain of MACs of the audit log and its head file",
        description="Verify every line of the audit log (MAC, sequence, chain) and its head "
        "file. Exit 1 at the first bad line.",
    )
    v.add_argument(
        "--log",
        metavar="PATH",
        help="the audit log (default <store>/audit.log; required for a Redis store)",
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
    report = verify(log_path, ring)
    if args.json:
        print_json(
            {
                "log": log_path,
                "ok": report.ok,
                "lines": report.lines,
                "last_seq": report.last_seq,
                "first_bad_line": report.first_bad_line,
                "reason": report.reason,
                "torn_tail": report.torn_tail,
            }
        )
    elif report.ok:
        torn = (
            "; an incomplete last line (a crash mid-append) was ignored" if report.torn_tail else ""
        )
        print(f"OK: {log_path}: {report.lines} lines verified (last seq {report.last_seq}){torn}")
    elif report.first_bad_line is None:
        print(f"FAILED: {log_path}: {report.reason}")
    else:
        print(f"FAILED: {log_path}: line {report.first_bad_line}: {report.reason}")
    return EXIT_OK if report.ok else EXIT_ERROR


def register(sub: Any) -> None:
    """Add this module's sub-commands to *sub* (an argparse sub-parsers action)."""
    register_audit(sub)
