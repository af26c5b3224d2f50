"""The run directory: resolved config, environment, metrics stream, checkpoints and status.

``runs/<name>-<YYYYmmdd-HHMMSS>/``. ``STATUS`` reads ``running`` while the run is going and turns to
``complete`` only after every output is written, so a half-written directory is never mistaken for a
result. ``metrics.jsonl`` has no timestamps (timings go to ``timings.json``), so two runs of the same
config and seed write byte-identical files.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from dfl.config import ExperimentConfig, InitConfig, dump_config, parse_config, read_yaml
from dfl.errors import ConfigError, RunError

CHECKPOINT = "checkpoints/latest.pt"


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("dfl-sim", "torch", "torchvision", "numpy", "networkx", "pydantic", "scikit-learn"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def git_commit() -> str | None:
    """The commit of the source tree dfl-sim runs from (or of the working directory), if any."""
    for cwd in (Path(__file__).resolve().parent, Path.cwd()):
        try:
            out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5)
        except (OSError, subprocess.SubprocessError):
            continue
        if out.returncode == 0:
            return out.stdout.strip()
    return None


class RunDir:
    """One run's directory and the files in it."""

    def __init__(self, path: Path) -> None:
        self.path = path

    # ------------------------------------------------------------------ creation and resume

    @classmethod
    def create(cls, cfg: ExperimentConfig, base: Path | None = None) -> RunDir:
        root = Path(base if base is not None else cfg.output.dir)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        try:
            root.mkdir(parents=True, exist_ok=True)
            path, k = root / f"{cfg.name}-{stamp}", 1
            while True:  # claimed by mkdir itself, so runs started in the same second never share a directory
                try:
                    path.mkdir()
                    break
                except FileExistsError:
                    k += 1
                    path = root / f"{cfg.name}-{stamp}-{k}"
            (path / "tables").mkdir()
            (path / "plots").mkdir()
            (path / "checkpoints").mkdir()
        except OSError as exc:
            raise RunError(f"cannot create the run directory {path}: {exc}; set output.dir to a writable place") from None
        rd = cls(path)
        rd.set_status("running")
        (path / "config.yaml").write_text(dump_config(cfg))
        info = {
            "seed": cfg.seed,
            "versions": package_versions(),
            "git_commit": git_commit(),
            "command": sys.argv,
            "host": platform.node(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        (path / "run.json").write_text(json.dumps(info, indent=2))
        (path / "metrics.jsonl").write_bytes(b"")
        return rd

    @classmethod
    def open(cls, path: str | Path) -> RunDir:
        p = Path(path)
        if not (p / "config.yaml").is_file():
            raise RunError(f"{p} is not a run directory (no config.yaml); pass the directory `dfl-sim run` printed")
        return cls(p)

    def config(self) -> ExperimentConfig:
        return parse_config(read_yaml(self.path / "config.yaml"), source=str(self.path / "config.yaml"))

    # ------------------------------------------------------------------ status

    @property
    def status(self) -> str:
        f = self.path / "STATUS"
        return f.read_text().strip() if f.is_file() else "unknown"

    def set_status(self, status: str) -> None:
        _atomic_write(self.path / "STATUS", (status + "\n").encode())

    # ------------------------------------------------------------------ metrics

    def append(self, records: Iterable[dict[str, Any]]) -> None:
        with open(self.path / "metrics.jsonl", "a") as f:
            for rec in records:
                f.write(json.dumps(rec, sort_keys=False) + "\n")

    def metrics_size(self) -> int:
        return (self.path / "metrics.jsonl").stat().st_size

    def truncate_metrics(self, size: int) -> None:
        with open(self.path / "metrics.jsonl", "r+b") as f:
            f.truncate(size)

    def records(self) -> list[dict[str, Any]]:
        with open(self.path / "metrics.jsonl") as f:
            return [json.loads(line) for line in f if line.strip()]

    # ------------------------------------------------------------------ checkpoints

    def save_checkpoint(self, round_done: int, snaps: list[dict[str, Any]]) -> None:
        """Every node's state after ``round_done`` rounds, and where metrics.jsonl ended then."""
        import io

        buf = io.BytesIO()
        torch.save({"round": round_done, "metrics_bytes": self.metrics_size(), "participants": snaps}, buf)
        _atomic_write(self.path / CHECKPOINT, buf.getvalue())

    @classmethod
    def init_source(cls, init: InitConfig) -> RunDir:
        """The complete run ``init.run``, checked to hold node ``init.node``'s final state (read from its config
        and status, not its checkpoint); ``ConfigError`` naming the field if it does not."""
        try:
            source = cls.open(Path(init.run).expanduser())
        except RunError as exc:
            raise ConfigError([("init.run", str(exc))]) from None
        if source.status != "complete":
            raise ConfigError([("init.run", f"{source.path} is {source.status}, not complete; finish it first "
                                            f"(dfl-sim run --resume {source.path}) or give a complete run")])
        if not (source.path / CHECKPOINT).is_file():  # the last round is always checkpointed unless disabled
            raise ConfigError([("init.run", f"{source.path} has no {CHECKPOINT}; give a run made with "
                                            "output.checkpoint_every > 0")])
        nodes = source.config().nodes
        if init.node >= nodes:
            raise ConfigError([("init.node", f"{source.path} has nodes 0-{nodes - 1}, not {init.node}")])
        return source

    def final_state(self, node: int) -> torch.Tensor:
        """Node ``node``'s state after the last round of this complete run (its last checkpoint)."""
        return torch.load(self.path / CHECKPOINT, weights_only=True)["participants"][node]["state"]

    def load_checkpoint(self) -> dict[str, Any]:
        f = self.path / CHECKPOINT
        if not f.is_file():
            raise RunError(
                f"{self.path} has no checkpoint to resume from; it stopped before its first checkpoint "
                "(or output.checkpoint_every is 0): start the run again"
            )
        return torch.load(f, weights_only=True)
