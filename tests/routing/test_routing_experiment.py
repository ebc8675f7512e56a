"""The localization experiment's seed summary and its command line."""

import subprocess
import sys

import pytest

from govlab.studies.localization import configs, seed_summary


def row(source, others):
    return {"style_acc_source": source, "style_acc_others": others}


def test_seed_summary_reports_the_gap_per_seed_and_its_spread():
    pairs = [(row(0.2, 0.78), row(0.05, 0.72)), (row(0.1, 0.70), row(0.0, 0.71)), (row(0.15, 0.74), row(0.1, 0.74))]
    s = seed_summary(pairs)
    assert s["seeds"] == 3
    assert s["a_minus_b_others_points_by_seed"] == [6.0, -1.0, 0.0]
    assert s["a_minus_b_others_points_mean"] == pytest.approx(1.7)
    assert s["a_minus_b_others_points_sd"] == pytest.approx(3.8)
    assert s["a_minus_b_others_points_se"] == pytest.approx(2.2)
    assert s["routed_others_points_sd_over_seeds"] == pytest.approx(4.0)
    assert s["goal_a_others_within_2_mean"] is True
    assert seed_summary([pairs[0], pairs[0]])["goal_a_others_within_2_mean"] is False


def test_extra_seeds_shift_the_training_seed_and_the_names(tiny_cfg):
    base, more = configs(tiny_cfg), configs(tiny_cfg, seed=2)
    assert more["routed"].train.seed == base["routed"].train.seed + 2
    assert more["retrain"].name.endswith("-retrain-s2") and base["retrain"].name.endswith("-retrain")
    assert more["routed"].hash() != base["routed"].hash()


def test_bad_seed_count_is_one_clear_error(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "govlab.studies.localization", str(tmp_path), "--seeds", "0"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "--seeds must be >= 1, got 0" in proc.stderr
    assert not any(tmp_path.iterdir())


def test_missing_config_is_one_clear_error(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "govlab.studies.localization", str(tmp_path / "w"), "--config",
                           str(tmp_path / "nope.yaml")], capture_output=True, text=True)
    assert proc.returncode == 2 and "nope.yaml: config file not found" in proc.stderr
    assert not (tmp_path / "w").exists()


def test_the_table_prints_each_figure_with_its_interval():
    from govlab.studies.localization import table

    rows = [{"variant": "(a) routed, slot zeroed", "style_acc_source": 0.16, "style_acc_source_ci": [0.1, 0.23],
             "style_acc_others": 0.774, "shape_acc": 0.57, "shape_acc_ci": [0.5, 0.64], "watermark_rate": None,
             "identity_rate": 0.25, "identity_rate_ci": [0.125, 0.375]}]
    md = table({"rows": rows, "summary": {"artist": "artist_0"}})
    head, rule, line = md.strip().splitlines()
    assert head.startswith("| variant | artist_0 style | other artists' style |")
    assert line == "| (a) routed, slot zeroed | 0.16 [0.10, 0.23] | 0.77 | 0.57 [0.50, 0.64] | - | 0.25 [0.12, 0.38] |"
