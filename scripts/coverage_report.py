"""``coverage report`` for a terminal: files below 100% only, long "Missing" columns wrapped.

Used by ``make pytest``; exits with coverage's status (2 below the --fail-under gate).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

WIDTH = 100


def main(fail_under: str) -> int:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "coverage",
            "report",
            "--skip-covered",
            f"--fail-under={fail_under}",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    for raw in proc.stdout.splitlines():
        line = raw.rstrip()
        if len(line) <= WIDTH:
            print(line)
        else:  # the Missing column of a file with many gaps: continue on indented lines
            print(textwrap.fill(line, WIDTH, subsequent_indent=" " * 8, break_long_words=False))
    sys.stderr.write(proc.stderr)
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "90"))
