"""The ``keys`` sub-commands: ``keys rotate`` and ``keys list``."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from stuisession.cli._common import (
    EXIT_ERROR,
    EXIT_OK,
    Fail,
    UsageError,
    admin_audit,
    admin_parents,
    admin_store,
    audit_option,
    common_parent,
    json_parent,
    print_json,
    progress,
    progress_parent,
    short,
    table,
)


def register_keys(sub: Any) -> None:
    """Add the ``keys`` parser(s) to *sub*."""
    p = sub.add_parser(
        "keys",
        help="rotate or list the keys of the keyring",
        description="Key management. Key material is never printed.",
    )
    actions = p.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    r = actions.add_parser(
        "rotate",
        parents=admin_parents(json_parent(), progress_parent()),
        help="add a new current key and re-seal every session with it",
        description="Add a new current key, save the keyring (0600) to --key-file (default "
        "<store>/keyring.json; required for Redis), then re-seal every session under it. "
        "Old keys stay to read backups and older audit lines. Restart running bridges.",
    )
    audit_option(r)
    r.set_defaults(handler=cmd_keys_rotate, parser=r)
    ls = actions.add_parser(
        "list",
        parents=admin_parents(json_parent()),
        help="list the key ids and which one is current",
        description="List the key ids of the keyring and mark the current one.",
    )
    ls.set_defaults(handler=cmd_keys_list, parser=ls)
    for role in ("server", "client"):
        c = actions.add_parser(
            f"curve-{role}",
            parents=[common_parent()],
            help=f"make a CurveZMQ key pair for the {role}",
            description=f"Write NAME.key (public) and NAME.key_secret (mode 0600) for the "
            f"{role} with zmq.auth.create_certificates. Refuses to overwrite.",
        )
        c.add_argument("--out", required=True, metavar="DIR", help="directory to write to")
        c.add_argument(
            "--name",
            default="server" if role == "server" else None,
            required=role == "client",
            help="file name stem"
            + (" (default server)" if role == "server" else " (e.g. the client id)"),
        )
        c.set_defaults(handler=cmd_keys_curve, parser=c)


def cmd_keys_curve(args: argparse.Namespace) -> int:
    """Write a CurveZMQ key pair (``keys curve-server`` / ``keys curve-client``)."""
    from stuisession.bridge.curve import generate_keypair

    try:
        public, secret = generate_keypair(args.out, args.name)
    except FileExistsError as exc:
        raise Fail(str(exc)) from None
    print(f"public key: {public}\nsecret key: {secret} (mode 0600: keep it private)")
    return EXIT_OK


# -- keys -------------------------------------------------------------------------------
def cmd_keys_rotate(args: argparse.Namespace) -> int:
    from stuisession.admin import core
    from stuisession.keys import ENV_KEYRING

    directory = core.store_directory(args.store)
    key_file = args.key_file or (None if directory is None else str(directory / "keyring.json"))
    if key_file is None:
        raise UsageError("give --key-file for a Redis store: the rotated keyring is saved there")
    store = admin_store(args, key_file)
    try:
        audit = admin_audit(args, store)
        total = sum(1 for _ in store.ids())
        with progress(args, total, "re-seal ") as bar:
            report = core.rotate_keys(store, key_file=key_file, audit=audit, progress=bar)
    finally:
        store.close()
    if args.json:
        print_json(
            {
                "new_key_id": report.new_key_id,
                "key_file": key_file,
                "resealed": report.resealed,
                "skipped": report.skipped,
                "failed": len(report.failed),
            }
        )
    else:
        print(f"new current key: {report.new_key_id} (keyring saved to {key_file})")
        print(
            f"re-sealed {report.resealed} sessions, skipped {report.skipped}, "
            f"failed {len(report.failed)}"
        )
        for sid in report.failed:
            print(f"FAILED {short(sid)} (unreadable or kept changing; run verify)")
    if os.environ.get(ENV_KEYRING):
        print(
            f"note: ${ENV_KEYRING} is set: processes taking the keyring from it need the "
            f"rotated keyring in {key_file}",
            file=sys.stderr,
        )
    print("restart running bridges so that they load the new keyring", file=sys.stderr)
    return EXIT_ERROR if report.failed else EXIT_OK


def cmd_keys_list(args: argparse.Namespace) -> int:
    from stuisession.admin import core

    ring = core.load_keyring(args.key_file, args.store)
    if args.json:
        print_json({"current": ring.current_id, "keys": ring.key_ids})
        return EXIT_OK
    rows = [[kid, "yes" if kid == ring.current_id else ""] for kid in ring.key_ids]
    print(table(["KEY ID", "CURRENT"], rows))
    return EXIT_OK


def register(sub: Any) -> None:
    """Add this module's sub-commands to *sub* (an argparse sub-parsers action)."""
    register_keys(sub)
