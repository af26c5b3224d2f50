"""The run directory: resolved config, environment, metrics stream, checkpoints and status.

``runs/<name>-<YYYYmmdd-HHMMSS>/``. ``STATUS`` reads ``running`` while the run is going and turns to
``complete`` only after every output is written, so a half-written directory is never mistaken for a
result. ``metrics.jsonl`` has no timestamps (timings go to ``timings.json``), so two runs of the same
config and seed write byte-identical files.
"""

from __future__ import annotations

import io
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import time
import warnings
from collections.abc import Iterable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from dfl.config import ExperimentConfig, InitConfig
from dfl.errors import ConfigError, RunError
from dfl.experiment import dump_config, parse_config, read_yaml

CHECKPOINT = "checkpoints/latest.pt"
SIGNALS = "signals"  # per-sample membership scores, one .npz per attack record (dfl.adversary.membership)


def _atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename; on failure no temporary file is left."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _finite(value: Any) -> Any:
    """``value`` with every non-finite float (NaN, +-inf) replaced by ``None``: strict JSON has no NaN."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _nan_for_null(record: dict[str, Any]) -> dict[str, Any]:
    """A record read back: ``null`` values are non-finite numbers again (NaN), except the fields where
    ``null`` is a value of its own (``node`` of round and fault records; a TPR at an FPR the evaluation
    set cannot resolve; the reference mode of an attack without reference models)."""
    return {k: (math.nan if v is None and k not in NULL_FIELDS else v) for k, v in record.items()}


NULL_FIELDS = frozenset({"node", "tpr_at_1_fpr", "tpr_at_0.1_fpr", "tpr_at_0.01_fpr", "reference_mode", "spectral_gap",
                         "hops", "epsilon_lower", "audit_threshold", "fpr_upper", "fnr_upper", "view", "evasion",
                         "detected"})


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
        """A new run directory below ``base`` (default ``output.dir``), with its config, ``run.json``, an empty
        metrics stream and STATUS ``running``. Fails with a ``RunError`` naming the place, and leaves nothing
        behind, if any of that cannot be written (not a directory, no permission, disk full)."""
        root = Path(base if base is not None else cfg.output.dir)
        field = "--out" if base is not None else "output.dir"
        check_out_dir(root, field)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path: Path | None = None
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
        except OSError as exc:
            if path is not None:
                shutil.rmtree(path, ignore_errors=True)
            raise RunError(f"{field}: cannot create a run directory in {str(root)!r}: {_os_reason(exc)}; "
                           f"free space there or set {field} to a writable directory") from None
        return rd

    @classmethod
    def open(cls, path: str | Path) -> RunDir:
        p = Path(path)
        if not (p / "config.yaml").is_file():
            raise RunError(f"{p} is not a run directory (no config.yaml); pass the directory `dfl-sim run` printed")
        return cls(p)

    def config(self) -> ExperimentConfig:
        return parse_config(read_yaml(self.path / "config.yaml"), source=str(self.path / "config.yaml"))

    def resume_hint(self) -> str:
        return f"dfl-sim run --resume {self.path}"

    # ------------------------------------------------------------------ status

    @property
    def status(self) -> str:
        f = self.path / "STATUS"
        return f.read_text().strip() if f.is_file() else "unknown"

    def set_status(self, status: str) -> None:
        """Replace STATUS atomically; if that cannot be written (a full disk), overwrite the old one in place,
        which needs no new block. Never raises: a status that cannot be set at all stays as it was."""
        data = (status + "\n").encode()
        try:
            _atomic_write(self.path / "STATUS", data)
        except OSError:
            try:
                with open(self.path / "STATUS", "r+b") as f:
                    f.write(data)
                    f.truncate(len(data))
            except OSError:
                pass

    # ------------------------------------------------------------------ metrics

    def append(self, records: Iterable[dict[str, Any]]) -> None:
        """Append records as JSON lines; non-finite numbers are written as ``null`` (strict JSON)."""
        text = "".join(json.dumps(_finite(rec), sort_keys=False, allow_nan=False) + "\n" for rec in records)
        with open(self.path / "metrics.jsonl", "a") as f:
            f.write(text)

    def write_mixes(self, round_no: int, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
        """``mixes/round-NNNN.csv`` (``mode: async`` with ``async.log_mixes``): one line per mix, written
        whole (a replayed round after a resume or a fault rewrites its file)."""
        (self.path / "mixes").mkdir(exist_ok=True)
        lines = [",".join(columns)] + [",".join(repr(v) if isinstance(v, float) else str(v) for v in row) for row in rows]
        _atomic_write(self.path / "mixes" / f"round-{round_no:04d}.csv", ("\n".join(lines) + "\n").encode())

    def metrics_size(self) -> int:
        return (self.path / "metrics.jsonl").stat().st_size

    def truncate_metrics(self, size: int) -> None:
        """Cut metrics.jsonl back to ``size`` bytes (where a checkpoint recorded it ended). A shorter file, or a
        cut that does not fall at a line's end, means the run directory was altered: ``RunError``, file untouched."""
        f = self.path / "metrics.jsonl"
        try:
            have = f.stat().st_size
            ok = have >= size and (size == 0 or _byte_at(f, size - 1) == b"\n")
        except OSError as exc:
            raise RunError(f"{self.path}: cannot read metrics.jsonl ({_os_reason(exc)}); the run cannot be resumed, "
                           "start it again") from None
        if not ok:
            raise RunError(f"{self.path}: metrics.jsonl holds {have} bytes but the checkpoint recorded {size} "
                           "at a line's end; the file was changed or truncated after the run wrote it, so the "
                           "run cannot be resumed: restore the file or start the run again")
        with open(f, "r+b") as fh:
            fh.truncate(size)

    def records(self) -> list[dict[str, Any]]:
        """Every record of metrics.jsonl, ``null`` numbers read back as NaN (see :meth:`append`)."""
        with open(self.path / "metrics.jsonl") as f:
            return [_nan_for_null(json.loads(line)) for line in f if line.strip()]

    # ------------------------------------------------------------------ checkpoints

    def save_checkpoint(self, round_done: int, snaps: list[dict[str, Any]]) -> None:
        """Every node's state after ``round_done`` rounds, and where metrics.jsonl ended then."""
        buf = io.BytesIO()
        torch.save({"round": round_done, "metrics_bytes": self.metrics_size(), "participants": snaps}, buf)
        _atomic_write(self.path / CHECKPOINT, buf.getvalue())

    @classmethod
    def init_source(cls, init: InitConfig) -> tuple[RunDir, torch.Tensor]:
        """The complete run ``init.run`` and node ``init.node``'s final state in it, checked against the run's
        status and config and read from its last checkpoint; ``ConfigError`` naming the field if any of it
        is missing, corrupt or does not fit."""
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
        config = source.config()
        nodes = config.nodes
        if init.node >= nodes:
            raise ConfigError([("init.node", f"{source.path} has nodes 0-{nodes - 1}, not {init.node}")])
        try:
            ckpt = source.load_checkpoint(field="init.run")
        except RunError as exc:
            raise ConfigError([("init.run", str(exc).removeprefix("init.run: "))]) from None
        if len(ckpt["participants"]) != nodes or ckpt["round"] != config.rounds:
            raise ConfigError([("init.run", f"{source.path}/{CHECKPOINT} holds round {ckpt['round']} of "
                                            f"{len(ckpt['participants'])} nodes, not the last round of its "
                                            f"{nodes}; give a complete, unaltered run")])
        return source, ckpt["participants"][init.node]["state"]

    def final_state(self, node: int) -> torch.Tensor:
        """Node ``node``'s state after the last round of this complete run (its last checkpoint)."""
        return self.load_checkpoint(field="init.run")["participants"][node]["state"]

    def load_checkpoint(self, field: str = "--resume") -> dict[str, Any]:
        """The checkpoint, read with ``weights_only=True`` (tensors and plain containers, never code) and
        checked for the keys a run needs. Anything else (missing, truncated, corrupt, a pickle that asks for
        code) is a ``RunError`` naming ``field``; torch's own advice to retry with ``weights_only=False``,
        which would run an attacker's pickle, is never passed on."""
        f = self.path / CHECKPOINT
        if not f.is_file():
            raise RunError(
                f"{field}: {self.path} has no checkpoint to resume from; it stopped before its first checkpoint "
                "(or output.checkpoint_every is 0): start the run again"
            )
        try:
            with warnings.catch_warnings():  # e.g. an unexpected pickle protocol: the error below says it all
                warnings.simplefilter("ignore")
                ckpt = torch.load(f, weights_only=True, map_location="cpu")
        except Exception as exc:  # noqa: BLE001 -- any failure to unpickle: the file is not a checkpoint of ours
            reason = _unpickling_reason(exc)
            raise RunError(f"{field}: {f} is not a readable dfl-sim checkpoint ({reason}); it is corrupt, truncated "
                           "or was not written by dfl-sim. Do not load it by other means; start the run again "
                           "or restore the file") from None
        if not _checkpoint_shape(ckpt):
            raise RunError(f"{field}: {f} does not hold a dfl-sim checkpoint (round, metrics_bytes, participants); "
                           "start the run again or restore the file")
        return ckpt


def _checkpoint_shape(ckpt: Any) -> bool:
    """Whether a loaded object has the keys and types a dfl-sim checkpoint has."""
    return (isinstance(ckpt, dict) and isinstance(ckpt.get("round"), int) and isinstance(ckpt.get("metrics_bytes"), int)
            and isinstance(ckpt.get("participants"), list)
            and all(isinstance(p, dict) and isinstance(p.get("state"), torch.Tensor) for p in ckpt["participants"]))


def _byte_at(path: Path, offset: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(1)


def _os_reason(exc: OSError) -> str:
    """``No space left on device`` rather than ``[Errno 28] No space left on device: '/long/path'``."""
    return exc.strerror or str(exc)


def check_out_dir(root: Path, field: str) -> None:
    """Raise ``RunError`` naming ``field`` if ``root`` (or a folder above it) exists but is not a directory.

    Called before data are loaded, so a mistyped ``--out`` fails at once."""
    for p in (root, *root.parents):
        if p.exists() or p.is_symlink():
            if not p.is_dir():
                what = "is a file" if p == root else f"lies below {str(p)!r}, which is a file"
                raise RunError(f"{field}: {str(root)!r} {what}, not a directory; give a directory (it is created "
                               "if missing)")
            return


def make_dir(path: Path, field: str) -> Path:
    """Create ``path`` (and its parents) for a study's outputs, or raise ``RunError`` naming ``field``."""
    check_out_dir(path, field)
    try:
        path.mkdir(parents=True, exist_ok=False)
    except OSError as exc:
        raise RunError(f"{field}: cannot create {str(path)!r}: {_os_reason(exc)}; set {field} to a writable "
                       "directory") from None
    return path


def _unpickling_reason(exc: Exception) -> str:
    """Why ``torch.load(weights_only=True)`` failed, in a few words and without torch's advice to retry with
    ``weights_only=False`` (the one step that would run the code a hostile file carries)."""
    text = str(exc)
    glob = re.search(r"unsupported GLOBAL (\S+)", text, re.I)
    if glob:
        return f"it asks to import {glob.group(1)}, which a checkpoint never does"
    if "weights_only" in text:
        detail = re.search(r"WeightsUnpickler error:\s*([^\n]+)", text)
        return f"not a checkpoint's pickle{': ' + detail.group(1).strip() if detail else ''}"
    first = (text.strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {first[:100]}"
