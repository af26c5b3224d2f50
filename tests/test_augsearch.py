"""The defensive-augmentation search: scores per class, the advantage formula, a usable policy."""

from __future__ import annotations

import copy

import numpy as np
import yaml

from dfl.cli import main
from dfl.experiment import parse_config
from dfl.studies.augsearch import search, write


def test_search_scores_every_candidate_and_writes_a_policy_the_defense_accepts(tiny, write_cfg, tmp_path):
    cfg = parse_config(tiny)
    result = search(cfg, sigma=0.5, ops=["invert", "posterize"], magnitudes=[0, 9], train_samples=120, epochs=2,
                    images_per_class=1, iterations=5)
    k = 4
    assert [(r["op"], r["magnitude"]) for r in result["candidates"]] == [
        ("invert", 0), ("invert", 9), ("posterize", 0), ("posterize", 9)]
    ma_dp, aa_dp = np.array(result["dp"]["ma"]), np.array(result["dp"]["aa"])
    for r in result["candidates"]:
        assert len(r["ma"]) == len(r["aa"]) == k
        np.testing.assert_allclose(r["advantage"], (np.array(r["ma"]) - ma_dp) + (aa_dp - np.array(r["aa"])))
    for c, name in enumerate(result["classes"]):  # each class gets its best candidate
        op, m = result["policy"][name]
        best = max(r["advantage"][c] for r in result["candidates"])
        assert next(r for r in result["candidates"] if (r["op"], r["magnitude"]) == (op, m))["advantage"][c] == best
    # posterize M0 is the identity: the model trains exactly as without augmentation, twice alike
    p0 = next(r for r in result["candidates"] if (r["op"], r["magnitude"]) == ("posterize", 0))
    again = search(cfg, sigma=0.5, ops=["posterize"], magnitudes=[0], train_samples=120, epochs=2,
                   images_per_class=1, iterations=5)
    assert again["candidates"][0]["ma"] == p0["ma"] and again["policy"] == {n: ["posterize", 0] for n in result["classes"]}
    write(result, tmp_path / "out")
    raw = copy.deepcopy(tiny)
    raw.update(yaml.safe_load((tmp_path / "out" / "policy.yaml").read_text()))
    assert main(["validate", str(write_cfg(raw))]) == 0
    assert "| class | op | M |" in (tmp_path / "out" / "report.md").read_text()


def test_bad_search_input_exits_2(tiny, write_cfg, capsys, tmp_path):
    path = str(write_cfg(tiny))
    assert main(["search-augmentation", path, "--ops", "blur", "--out", str(tmp_path / "x")]) == 2
    assert "--ops" in capsys.readouterr().err
    assert main(["search-augmentation", path, "--magnitudes", "12", "--out", str(tmp_path / "x")]) == 2
    assert "--magnitudes" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
