"""Two real ``stuisession serve`` processes on one Redis Cluster (examples/cluster_recipe.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


# make faults only (marker `heavy`): make test runs two bridges on one cluster in-process
# (tests/test_redis_cluster.py) and two real bridges on one Redis (tests/e2e/test_bridge_e2e.py)
@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.heavy
def test_cluster_recipe_two_bridges_one_service() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "cluster_recipe.py")],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "all acknowledged and read back" in done.stdout
    # each bridge logged the effective durability at start
    assert done.stdout.count("durability: replicas=1 (each write waits for WAIT 1") == 2
