"""The ``stuisession`` command (also ``python -m stuisession``): parser, dispatch, global flags.

Each sub-command lives in its own module next to its parser: a module's
``register(sub)`` adds its parsers and sets ``handler`` (a callable taking the
parsed arguments and returning an exit code) and ``parser`` (for usage errors).
Global flags (``--log-level``) are accepted before or after the sub-command.

Exit codes: 0 success, 1 runtime error (e.g. address in use, unreadable
store), 2 usage error (also a bad policy value), 130 interrupted.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from stuisession._version import __version__
from stuisession.cli import audit, keys, maintenance, serve, sessions, status
from stuisession.cli._common import (
    EXIT_ERROR,
    EXIT_OK,
    EXIT_USAGE,
    Command,
    Fail,
    UsageError,
    log_level,
    setup_logging,
)
from stuisession.errors import StuiSessionError

__all__ = ["build_parser", "main"]

#: the command modules, in help order; each has ``register(sub)``
_MODULES = (serve, sessions, maintenance, keys, audit, status)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every sub-command."""
    parser = argparse.ArgumentParser(
        prog="stuisession",
        description="Durable, secure sessions for STUI: the ZeroMQ bridge and store tools.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    # the same flag on every sub-command uses default=SUPPRESS, so that a value given
    # before the sub-command is not reset by the sub-command's default
    parser.add_argument(
        "--log-level",
        type=log_level,
        default=logging.INFO,
        metavar="LEVEL",
        help="DEBUG, INFO (default), WARNING, ERROR; also accepted after the sub-command",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in _MODULES:
        module.register(sub)
    return parser


def _quiet_broken_pipe() -> int:
    # the reader went away (`stuisession list | head -1`): not an error. Point stdout
    # at /dev/null so that the interpreter's final flush does not fail again.
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # stdout replaced by an object without a descriptor
        pass
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code (0 ok, 1 error, 2 usage, 130 interrupted)."""
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
        command_parser: argparse.ArgumentParser = getattr(args, "parser", parser)
        if extra:  # report unknown arguments with the sub-command's usage, not the top's
            command_parser.error(f"unrecognized arguments: {' '.join(extra)}")
    except SystemExit as exc:  # argparse exits on --help, --version and bad usage
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    setup_logging(args.log_level)
    handler: Command = args.handler
    prefix = f"{command_parser.prog}: error:"
    try:
        try:
            code = handler(args)
            sys.stdout.flush()
            return code
        except UsageError as exc:
            command_parser.print_usage(sys.stderr)
            print(f"{prefix} {exc}", file=sys.stderr)
            return EXIT_USAGE
        except Fail as exc:
            print(f"{prefix} {exc}", file=sys.stderr)
        except StuiSessionError as exc:
            print(f"{prefix} {exc.error_type}: {exc.message}", file=sys.stderr)
        except BrokenPipeError:
            raise
        except OSError as exc:
            print(f"{prefix} {exc}", file=sys.stderr)
        except KeyboardInterrupt:  # before the signal handlers were installed
            return 130
    except BrokenPipeError:
        return _quiet_broken_pipe()
    return EXIT_ERROR
