"""A real multi-node Ray cluster on this machine: ``tests/ray_cluster_scenario.py`` in a network namespace.

The scenario starts a head (``ray start --head --port P --num-cpus 1``) and a second node (``ray start
--address 127.0.0.1:P --num-cpus 1``), runs the digits experiment on the cluster, on a local Ray and on the
serial engine, then kills the second node in the middle of a longer run. It runs inside ``unshare --net``:
a network namespace whose only interface is the loopback one, so every Ray node registers as 127.0.0.1
and no process of the test can reach any other address. Needs root (or user namespaces) and ``ip``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("ray")

SCENARIO = Path(__file__).with_name("ray_cluster_scenario.py")


def _netns_available() -> bool:
    if sys.platform != "linux" or not shutil.which("unshare") or not shutil.which("ip"):
        return False
    probe = subprocess.run(["unshare", "--net", "sh", "-c", "ip link set lo up"], capture_output=True)
    return probe.returncode == 0


@pytest.mark.slow
@pytest.mark.skipif(not _netns_available(), reason="needs `unshare --net` (root) and `ip` to isolate the cluster")
def test_two_node_cluster_equals_local_engines_and_survives_losing_a_node(tmp_path):
    proc = subprocess.run(["unshare", "--net", "sh", "-c", 'ip link set lo up && exec "$0" "$1" "$2"',
                           sys.executable, str(SCENARIO), str(tmp_path)], capture_output=True, text=True, timeout=1200)
    found_file = tmp_path / "findings.json"
    found = json.loads(found_file.read_text()) if found_file.is_file() else {}
    assert proc.returncode == 0, (found, proc.stderr[-4000:])
    assert found["raylets"] == 2, found  # two nodes, each its own raylet
    assert found["cluster_rc"] == 0 and found["local_ray_rc"] == 0 and found["serial_rc"] == 0, found
    assert found["cluster_equals_serial"] and found["local_ray_equals_serial"], found
    # the second node dies after round 2: the run recovers on the head with a fault record, or stops with
    # one message naming the resume command and then resumes there
    assert found["killed"] > 0 and found["killed_at_round"] >= 2, found
    if found["fault_rc"] == 0:
        assert found["fault_records"], found
        assert all(r["resumed_from_round"] >= 2 for r in found["fault_records"])
    else:
        err = found["fault_stderr"]
        assert err.count("error:") == 1 and "dfl-sim run --resume" in err and "Traceback" not in err, err
        assert found["resume_rc"] == 0, found
    assert found["fault_status"] == "complete", found
    assert found["fault_equals_reference"], found  # the metrics of an undisturbed run (fault records aside)
