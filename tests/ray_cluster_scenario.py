"""A real two-node Ray cluster on this machine, driven through the CLI; prints its findings as one JSON object.

Run by ``tests/test_ray_cluster.py`` inside a network namespace of its own whose only interface is the
loopback one (``unshare --net``), so every node registers as 127.0.0.1 and nothing can reach another
address. The steps, as a user would take them:

1. ``ray start --head --port P --num-cpus 1`` and ``ray start --address 127.0.0.1:P --num-cpus 1``: two nodes,
   each with its own raylet.
2. The digits experiment for 2 rounds with ``engine.ray.address: 127.0.0.1:P`` (two actors: one per node),
   on a local Ray instance and on the serial engine.
3. A longer run on the cluster whose second node is killed (its raylet, agents and workers, with SIGKILL)
   after round 2; then, if that run stopped, ``--resume`` on what is left.

Usage: ``python tests/ray_cluster_scenario.py OUT_DIR``. Every process the cluster started is killed at the
end (found through the cluster's own temporary folder), never any other Ray on the machine.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENT = ROOT / "experiments" / "ring_digits.yaml"
BIN = Path(sys.executable).parent
FAULT_ROUNDS = 6


def processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) of every process, from /proc."""
    out: dict[int, tuple[int, str]] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        out[int(d.name)] = (ppid, cmd)
    return out


def with_descendants(pids: set[int]) -> set[int]:
    table = processes()
    found = set(pids)
    grew = True
    while grew:
        more = {p for p, (ppid, _) in table.items() if ppid in found} - found
        found |= more
        grew = bool(more)
    return found


def of_cluster(temp: Path) -> set[int]:
    """The processes started for the cluster whose temporary folder is ``temp``."""
    return {p for p, (_, cmd) in processes().items() if str(temp) in cmd and p != os.getpid()}


def kill(pids: set[int]) -> None:
    for p in pids:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dfl_sim(args: list[str], env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "dfl-sim"), *args], capture_output=True, text=True, env=env, timeout=timeout)


def run_dir(out: Path) -> Path:
    (d,) = out.iterdir()
    return d


def metric_lines(d: Path, drop_faults: bool = True) -> list[str]:
    lines = (d / "metrics.jsonl").read_text().splitlines()
    return [ln for ln in lines if not (drop_faults and '"kind": "fault"' in ln)]


def rounds_done(out: Path) -> int:
    files = list(out.glob("*/metrics.jsonl"))
    return sum(ln.count('"kind": "round"') for ln in files[0].read_text().splitlines()) if files else 0


class Findings(dict):
    """What the scenario found, written to ``OUT/findings.json`` after every step (so a timeout keeps it)."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path

    def __setitem__(self, key: str, value: object) -> None:
        super().__setitem__(key, value)
        self.path.write_text(json.dumps(self, indent=1))


def main(out: Path) -> dict[str, object]:
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "COLUMNS": "300"}
    for var in ("RAY_ADDRESS", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"):  # a parent that ran a local Ray may set them
        env.pop(var, None)
    temp = Path(tempfile.mkdtemp(prefix="rc", dir="/tmp"))  # short: Ray's socket paths live below it
    port = free_port()
    address = f"127.0.0.1:{port}"
    found = Findings(out / "findings.json")
    found["address"] = address
    ray = str(BIN / "ray")
    try:
        t0 = time.monotonic()
        subprocess.run([ray, "start", "--head", "--port", str(port), "--num-cpus", "1", "--include-dashboard=false",
                        "--temp-dir", str(temp), "--disable-usage-stats"], check=True, env=env, capture_output=True,
                       timeout=180)
        head = of_cluster(temp)
        subprocess.run([ray, "start", "--address", address, "--num-cpus", "1"], check=True, env=env,
                       capture_output=True, timeout=180)
        time.sleep(2)
        second = of_cluster(temp) - head
        table = processes()
        found["raylets"] = sum("raylet/raylet " in table[p][1] for p in of_cluster(temp) if p in table)
        found["start_s"] = round(time.monotonic() - t0, 1)

        # 2 rounds on the cluster, on a local Ray and on the serial engine
        common = ["--set", "rounds=2", "--quiet"]
        runs = {
            "cluster": ["--set", "engine.name=ray", "--set", f"engine.ray.address={address}",
                        "--set", "engine.ray.actors=2"],
            "local_ray": ["--set", "engine.name=ray", "--set", "engine.ray.actors=2"],
            "serial": [],
        }
        metrics = {}
        for name, sets in runs.items():
            t = time.monotonic()
            proc = dfl_sim(["run", str(EXPERIMENT), *common, *sets, "--out", str(out / name)], env)
            found[f"{name}_rc"] = proc.returncode
            found[f"{name}_s"] = round(time.monotonic() - t, 1)
            if proc.returncode != 0:
                found[f"{name}_stderr"] = proc.stderr[-3000:]
                continue
            metrics[name] = (run_dir(out / name) / "metrics.jsonl").read_bytes()
        found["cluster_equals_serial"] = metrics.get("cluster") is not None and metrics.get("cluster") == metrics.get("serial")
        found["local_ray_equals_serial"] = metrics.get("local_ray") is not None and metrics.get("local_ray") == metrics.get("serial")

        # the second node dies after round 2 of a longer run
        reference = dfl_sim(["run", str(EXPERIMENT), "--set", f"rounds={FAULT_ROUNDS}", "--quiet", "--out",
                             str(out / "reference")], env)
        assert reference.returncode == 0, reference.stderr
        t = time.monotonic()
        log = open(out / "fault.stderr", "w")  # noqa: SIM115 -- read back below
        proc = subprocess.Popen([str(BIN / "dfl-sim"), "run", str(EXPERIMENT), "--set", f"rounds={FAULT_ROUNDS}",
                                 "--set", "engine.name=ray", "--set", f"engine.ray.address={address}",
                                 "--set", "engine.ray.actors=2", "--quiet", "--out", str(out / "fault")],
                                stdout=subprocess.DEVNULL, stderr=log, text=True, env=env)
        deadline = time.monotonic() + 300
        while rounds_done(out / "fault") < 2 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
        victims = with_descendants(second & set(processes()))
        found["killed"] = len(victims)
        found["killed_at_round"] = rounds_done(out / "fault")
        kill(victims)
        proc.wait(timeout=400)
        log.close()
        found["fault_rc"] = proc.returncode
        found["fault_stderr"] = (out / "fault.stderr").read_text()[-3000:]
        found["fault_s"] = round(time.monotonic() - t, 1)
        d = run_dir(out / "fault")
        found["fault_status"] = (d / "STATUS").read_text().strip()
        lines = metric_lines(d, drop_faults=False)
        found["fault_records"] = [json.loads(ln) for ln in lines if '"kind": "fault"' in ln]
        if proc.returncode != 0:
            resumed = dfl_sim(["run", "--resume", str(d), "--quiet"], env, timeout=400)
            found["resume_rc"] = resumed.returncode
            found["resume_stderr"] = resumed.stderr[-3000:]
            found["fault_status"] = (d / "STATUS").read_text().strip()
        found["fault_equals_reference"] = metric_lines(d) == metric_lines(run_dir(out / "reference"))
    finally:
        kill(with_descendants(of_cluster(temp)))
        shutil.rmtree(temp, ignore_errors=True)
    return found


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1]))))
