"""End to end on tiny data: outputs, determinism, resume, compare."""

from __future__ import annotations

import json

import pytest

from dfl import api
from dfl.rundir import RunDir


def _metrics(run_dir) -> bytes:
    return (run_dir / "metrics.jsonl").read_bytes()


def test_run_writes_a_complete_run_directory(tiny, write_cfg):
    tiny["output"]["plots"] = True
    res = api.run(write_cfg(tiny))
    d = res.run_dir
    assert res.status == "complete" and (d / "STATUS").read_text().strip() == "complete"
    for f in ("config.yaml", "run.json", "metrics.jsonl", "summary.json", "report.md", "tables/node_metrics.csv",
              "tables/final.csv", "tables/label_histogram.csv", "tables/rounds.csv", "plots/accuracy.png",
              "plots/topology.png", "checkpoints/latest.pt"):
        assert (d / f).is_file(), f
    recs = RunDir(d).records()
    kinds = {r["kind"] for r in recs}
    assert kinds == {"train", "eval", "round"}
    assert len([r for r in recs if r["kind"] == "eval"]) == 3 * 4
    summary = json.loads((d / "summary.json").read_text())
    assert summary["per_node"][1]["role"] == "attacker"
    info = json.loads((d / "run.json").read_text())
    assert info["seed"] == 0 and "torch" in info["versions"]
    hist = (d / "tables/label_histogram.csv").read_text().splitlines()
    assert len(hist) == 1 + 4
    assert "![accuracy](plots/accuracy.png)" in (d / "report.md").read_text()


def test_learning_happens_on_every_node(tiny, write_cfg):
    tiny["rounds"] = 5
    res = api.run(write_cfg(tiny))
    chance = 1 / 4
    assert all(n["test_acc"] > chance + 0.3 for n in res.summary["per_node"])
    rounds = [r for r in RunDir(res.run_dir).records() if r["kind"] == "round"]
    assert rounds[-1]["mean_test_acc"] > rounds[0]["mean_test_acc"] - 0.05


def test_same_config_same_seed_gives_byte_identical_metrics(tiny, write_cfg):
    a = api.run(write_cfg(tiny))
    b = api.run(write_cfg(tiny))
    assert a.run_dir != b.run_dir
    assert _metrics(a.run_dir) == _metrics(b.run_dir)
    c = api.run(write_cfg(tiny), ["seed=1"])
    assert _metrics(a.run_dir) != _metrics(c.run_dir)


@pytest.mark.parametrize("topology", ["ring", "star", "fully_connected"])
def test_resume_after_interruption_matches_uninterrupted_run(tiny, write_cfg, topology):
    tiny["rounds"] = 4
    tiny["topology"]["name"] = topology
    tiny["training"]["optimizer"]["momentum"] = 0.9  # optimizer state must survive the checkpoint
    cfg = write_cfg(tiny)
    full = api.run(cfg)
    part = api.run(cfg, stop_after=2)
    assert part.status == "interrupted" and RunDir(part.run_dir).status == "interrupted"
    assert not (part.run_dir / "summary.json").exists()
    done = api.resume(part.run_dir)
    assert done.status == "complete"
    assert _metrics(done.run_dir) == _metrics(full.run_dir)
    with pytest.raises(Exception, match="already complete"):
        api.resume(part.run_dir)


def test_resume_drops_records_written_after_the_checkpoint(tiny, write_cfg):
    tiny["rounds"] = 4
    tiny["output"]["checkpoint_every"] = 2
    cfg = write_cfg(tiny)
    full = api.run(cfg)
    part = api.run(cfg, stop_after=3)  # checkpoint after round 2, records of round 3 already written
    assert max(r["round"] for r in RunDir(part.run_dir).records()) == 3
    done = api.resume(part.run_dir)
    assert _metrics(done.run_dir) == _metrics(full.run_dir)


def test_compare_writes_one_table_over_the_grid(tiny, write_cfg, tmp_path):
    tiny["rounds"] = 2
    res = api.compare(write_cfg(tiny), ["topology.name=ring,fully_connected"], seeds=2, out_dir=tmp_path / "cmp")
    assert [r["topology.name"] for r in res.rows] == ["ring", "fully_connected"]
    assert all(r["seeds"] == 2 and "mean_test_acc_std" in r for r in res.rows)
    assert len(res.runs) == 4 and len({r.run_dir for r in res.runs}) == 4
    seeds = sorted(json.loads((r.run_dir / "summary.json").read_text())["seed"] for r in res.runs)
    assert seeds == [0, 0, 1, 1]
    table = (res.out_dir / "comparison.md").read_text()
    assert "| ring |" in table and "±" in table
    assert (res.out_dir / "comparison.csv").is_file() and (res.out_dir / "plots/accuracy.png").is_file()


def test_compare_validates_every_cell_before_running(tiny, write_cfg, tmp_path):
    from dfl.errors import ConfigError

    tiny["nodes"] = 2
    tiny["attackers"] = []
    with pytest.raises(ConfigError, match="ring needs at least 3 nodes"):
        api.compare(write_cfg(tiny), ["topology.name=fully_connected,ring"], out_dir=tmp_path / "cmp")
    assert not (tmp_path / "cmp").exists()


def test_compare_with_jobs_runs_in_worker_processes_with_the_same_figures(tiny, write_cfg, tmp_path):
    tiny["rounds"] = 2
    cfg = write_cfg(tiny)
    over = ["topology.name=ring,star"]
    seen: list[tuple[str, int, int]] = []
    one = api.compare(cfg, over, seeds=2, out_dir=tmp_path / "one")
    two = api.compare(cfg, over, seeds=2, out_dir=tmp_path / "two", jobs=2, on_run=lambda *a: seen.append(a))
    assert two.rows == one.rows
    for a, b in zip(one.runs, two.runs, strict=True):  # in grid order, whatever order they finished in
        assert _metrics(a.run_dir) == _metrics(b.run_dir)
    assert sorted(i for _, i, _ in seen) == [1, 2, 3, 4] and {t for _, _, t in seen} == {4}
    assert sorted(label for label, _, _ in seen) == ["topology.name=ring"] * 2 + ["topology.name=star"] * 2


def test_run_all_names_the_run_that_failed_and_refuses_bad_jobs(tiny, write_cfg, tmp_path):
    from dfl.errors import ConfigError, RunError

    cfg = write_cfg(tiny)
    broken = api.load_config(cfg, ["data.dataset={name: cifar10}", f"data.root={tmp_path / 'none'}"])
    with pytest.raises(RunError, match="run 'broken' failed: DataError: .*cifar10"):
        api.run_all([("fine", api.load_config(cfg)), ("broken", broken)], out_dir=tmp_path / "runs", jobs=2)
    assert len(list((tmp_path / "runs").iterdir())) == 1  # the fine run finished
    with pytest.raises(ConfigError, match="--jobs"):
        api.run_all([("a", api.load_config(cfg))], out_dir=tmp_path / "runs", jobs=0)
    with pytest.raises(ConfigError, match="Ray engine"):
        api.compare(cfg, ["seed=0,1"], out_dir=tmp_path / "cmp", jobs=2, overrides=["engine.name=ray"])
    assert not (tmp_path / "cmp").exists()


def test_run_directories_started_in_the_same_second_are_distinct(tiny, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    from dfl.config import ExperimentConfig

    cfg = ExperimentConfig.model_validate(tiny)
    with ThreadPoolExecutor(8) as pool:
        dirs = list(pool.map(lambda _: RunDir.create(cfg, tmp_path).path, range(16)))
    assert len(set(dirs)) == 16 and all((d / "config.yaml").is_file() for d in dirs)


def test_keyboard_interrupt_marks_the_run_and_resume_finishes_it(tiny, write_cfg):
    tiny["rounds"] = 4
    cfg = write_cfg(tiny)
    full = api.run(cfg)

    def interrupt(done: int, total: int, summary: dict) -> None:
        if done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        api.run(cfg, progress=interrupt)
    run_dir = max((p for p in full.run_dir.parent.iterdir() if p != full.run_dir), key=lambda p: p.name)
    assert RunDir(run_dir).status == "interrupted"
    done = api.resume(run_dir)
    assert _metrics(done.run_dir) == _metrics(full.run_dir)
