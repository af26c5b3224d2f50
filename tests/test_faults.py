"""Faults a long run meets: SIGTERM, a full disk, metrics cut short, non-finite numbers, oversized inputs.

Each ends the same way: STATUS ``interrupted`` or ``failed`` (never ``running``), one message with the
resume command, no temporary files, and a resumed run whose metrics equal an undisturbed run's.
"""

from __future__ import annotations

import errno
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError

from dfl import api
from dfl.cli import main
from dfl.errors import ConfigError, RunError
from dfl.experiment import MAX_VALUES, parse_config, raw_errors
from dfl.registry import pydantic_errors, short_repr
from dfl.rundir import RunDir


def metrics(run_dir: Path) -> bytes:
    return (run_dir / "metrics.jsonl").read_bytes()


@pytest.fixture
def reference(tiny, write_cfg):
    """An undisturbed 4-round run of the tiny experiment: (config path, its metrics)."""
    tiny["rounds"] = 4
    cfg = write_cfg(tiny)
    return cfg, metrics(api.run(cfg).run_dir)


# ------------------------------------------------------------------------------------------- SIGTERM


def test_sigterm_stops_as_interrupted_and_resumes_identically(tiny, write_cfg, tmp_path):
    tiny["rounds"] = 60
    cfg = write_cfg(tiny)
    out = tmp_path / "term"
    proc = subprocess.Popen([sys.executable, "-m", "dfl", "run", str(cfg), "--out", str(out), "--quiet"],
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "COLUMNS": "300"})
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not any(p.stat().st_size for p in out.glob("*/metrics.jsonl")):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    (run_dir,) = out.iterdir()
    assert proc.returncode == 143, err
    assert (run_dir / "STATUS").read_text().strip() == "interrupted"
    assert f"terminated (SIGTERM); resume with `dfl-sim run --resume {run_dir}`" in err
    assert "Traceback" not in err
    assert api.resume(run_dir).status == "complete"
    assert metrics(run_dir) == metrics(api.run(cfg).run_dir)


# ----------------------------------------------------------------------------------------- disk full


def _enospc(*_: object, **__: object) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_disk_full_at_a_checkpoint_fails_with_the_resume_command(reference, monkeypatch, capsys):
    cfg, undisturbed = reference
    real = RunDir.save_checkpoint

    def save(self, round_done, snaps):
        if round_done == 2:
            self.path.joinpath("checkpoints", "latest.pt.tmp").write_bytes(b"partial")  # as a full disk leaves it
            _enospc()
        real(self, round_done, snaps)

    monkeypatch.setattr(RunDir, "save_checkpoint", save)
    assert main(["run", str(cfg), "--quiet"]) == 2
    err = capsys.readouterr().err
    (run_dir,) = [p.parent for p in Path(cfg).parent.joinpath("runs").glob("*/STATUS") if p.read_text() == "failed\n"]
    assert "No space left on device" in err and f"dfl-sim run --resume {run_dir}" in err
    assert err.count("error:") == 1 and "Traceback" not in err
    assert (run_dir / "STATUS").read_text().strip() == "failed"
    monkeypatch.setattr(RunDir, "save_checkpoint", real)
    assert api.resume(run_dir).status == "complete"
    assert metrics(run_dir) == undisturbed


def test_status_is_written_in_place_when_no_new_file_fits(tmp_path, monkeypatch):
    rd = RunDir(tmp_path)
    rd.set_status("running")
    real = Path.write_bytes

    def write_bytes(self, data):
        if self.name.endswith(".tmp"):
            real(self, data[:1])  # a partial temporary file, then the disk is full
            _enospc()
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", write_bytes)
    rd.set_status("failed")
    assert (tmp_path / "STATUS").read_text() == "failed\n"
    assert not list(tmp_path.glob("*.tmp"))


def mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir()
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


@pytest.mark.skipif(os.geteuid() != 0 or sys.platform != "linux", reason="mounting a tmpfs needs root on Linux")
def test_a_real_full_disk(reference, tmp_path, capsys):
    """A run on a tmpfs too small for its checkpoints: exit 2, STATUS failed, no temporary file; resumed after
    the tmpfs grows, its metrics equal the undisturbed run's."""
    cfg, undisturbed = reference
    small = tmp_path / "small"
    if not mount_tmpfs(small, "96k"):
        pytest.skip("tmpfs cannot be mounted here")
    try:
        assert main(["run", str(cfg), "--out", str(small), "--quiet"]) == 2
        err = capsys.readouterr().err
        assert "No space left on device" in err and "Traceback" not in err
        (run_dir,) = small.iterdir()
        assert (run_dir / "STATUS").read_text().strip() == "failed"
        assert not list(small.rglob("*.tmp"))
        subprocess.run(["mount", "-o", "remount,size=64m", str(small)], check=True)
        assert api.resume(run_dir).status == "complete"
        assert metrics(run_dir) == undisturbed
    finally:
        subprocess.run(["umount", str(small)], capture_output=True)


@pytest.mark.skipif(os.geteuid() != 0 or sys.platform != "linux", reason="mounting a tmpfs needs root on Linux")
def test_no_room_for_the_run_directory_leaves_nothing(tiny, write_cfg, tmp_path, capsys):
    small = tmp_path / "tiny-disk"
    if not mount_tmpfs(small, "4k"):
        pytest.skip("tmpfs cannot be mounted here")
    try:
        assert main(["run", str(write_cfg(tiny)), "--out", str(small), "--quiet"]) == 2
        err = capsys.readouterr().err
        assert "--out" in err and "No space left on device" in err and "Traceback" not in err
        assert not list(small.iterdir())
    finally:
        subprocess.run(["umount", str(small)], capture_output=True)


# ------------------------------------------------------------------------------- metrics cut short


def test_resume_refuses_metrics_shorter_than_the_checkpoint_and_leaves_them(tiny, write_cfg):
    tiny["rounds"] = 3
    run_dir = api.run(write_cfg(tiny), stop_after=2).run_dir
    cut = metrics(run_dir)[:57]
    (run_dir / "metrics.jsonl").write_bytes(cut)
    with pytest.raises(RunError, match="metrics.jsonl holds 57 bytes"):
        api.resume(run_dir)
    assert metrics(run_dir) == cut  # never extended with NUL bytes
    assert (run_dir / "STATUS").read_text().strip() == "interrupted"


def test_metrics_are_cut_only_at_a_line_end(tmp_path):
    rd = RunDir(tmp_path)
    rd.append([{"round": 1, "v": 1}, {"round": 2, "v": 2}])
    whole = metrics(tmp_path)
    first = whole.index(b"\n") + 1
    (tmp_path / "metrics.jsonl").write_bytes(whole.replace(b"\n", b" ", 1))  # same size, the first line end gone
    with pytest.raises(RunError, match="changed or truncated"):
        rd.truncate_metrics(first)
    (tmp_path / "metrics.jsonl").write_bytes(whole)
    rd.truncate_metrics(first)
    assert metrics(tmp_path) == whole[:first]
    rd.truncate_metrics(0)
    assert metrics(tmp_path) == b""


# ------------------------------------------------------------------------------- non-finite numbers


def test_non_finite_numbers_are_strict_json_and_read_back_as_nan(tmp_path):
    rd = RunDir(tmp_path)
    rd.append([{"round": 1, "node": None, "kind": "round", "loss": float("nan"), "psnr": float("inf"),
                "roc": [0.5, float("-inf")], "acc": 0.25}])
    line = (tmp_path / "metrics.jsonl").read_text()

    def refuse(name: str) -> None:
        raise ValueError(f"non-standard JSON constant {name}")

    rec = json.loads(line, parse_constant=refuse)  # a strict parser reads it
    assert rec == {"round": 1, "node": None, "kind": "round", "loss": None, "psnr": None, "roc": [0.5, None],
                   "acc": 0.25}
    (back,) = rd.records()
    assert back["node"] is None and math.isnan(back["loss"]) and math.isnan(back["psnr"]) and back["acc"] == 0.25


@pytest.mark.parametrize("field", ["training.optimizer.lr", "training.optimizer.weight_decay", "data.holdout_fraction",
                                   "engine.ray.cpus_per_actor", "data.partition.params.alpha"])
@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan"])
def test_every_float_field_refuses_non_finite_values(tiny, field, value):
    if field.startswith("data.partition"):
        tiny["data"]["partition"] = {"name": "dirichlet"}
    with pytest.raises(ConfigError) as exc:
        parse_config(tiny, [f"{field}={value}"])
    assert exc.value.errors == [(field, f"{float(value.replace('.', '', 1))} is not a finite number; give a finite value")]


# ------------------------------------------------------------------------------------ large inputs


def test_an_alias_bomb_is_refused_before_it_is_walked():
    level = [1] * 10
    for _ in range(9):
        level = [level] * 10  # 10**10 values, a few hundred objects
    start = time.perf_counter()
    errors = raw_errors({"nodes": 4, "attackers": level})
    assert errors and errors[0][0] == "attackers" and f"more than {MAX_VALUES}" in errors[0][1]
    assert time.perf_counter() - start < 30  # bounded by MAX_VALUES, not by the expansion


def test_validation_messages_show_a_short_input():
    class P(BaseModel):
        x: list[int]

    huge = [list(range(1000))] * 1000
    with pytest.raises(ValidationError) as exc:
        P.model_validate({"x": huge})
    errors = pydantic_errors(exc.value)
    assert errors and all(len(msg) < 200 for _, msg in errors)
    assert short_repr(huge).endswith("...") or len(short_repr(huge)) <= 80
    assert short_repr("abc") == "'abc'"


def test_a_utf16_config_with_a_byte_order_mark_is_read(tmp_path, tiny):
    import yaml

    p = tmp_path / "u16.yaml"
    p.write_bytes(yaml.safe_dump(tiny).encode("utf-16"))
    assert main(["validate", str(p)]) == 0


# ------------------------------------------------------------------------------ Ray addresses


def test_a_port_that_answers_but_is_not_ray_fails_fast(monkeypatch):
    """A loopback listener that accepts connections and says nothing: refused within the probe's limit, not
    after Ray's own retries (many minutes)."""
    import socket
    import threading

    pytest.importorskip("ray")
    from dfl.engines import ray as ray_engine

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    monkeypatch.setattr(ray_engine, "PROBE_TIMEOUT_S", 4.0)
    address = f"127.0.0.1:{server.getsockname()[1]}"
    start = time.monotonic()
    try:
        with pytest.raises(ConfigError, match="accepts connections but no Ray cluster answers") as exc:
            ray_engine.check_address(address)
    finally:
        stop.set()
        thread.join()
        for c in held:
            c.close()
        server.close()
    assert exc.value.errors[0][0] == "engine.ray.address"
    assert time.monotonic() - start < 15


@pytest.mark.parametrize("address", ["nohost", "host:", ":6379", "host:99999", "host:port"])
def test_malformed_ray_addresses_name_the_field(address):
    from dfl.engines.ray import split_address

    with pytest.raises(ConfigError) as exc:
        split_address(address)
    assert exc.value.errors[0][0] == "engine.ray.address"
