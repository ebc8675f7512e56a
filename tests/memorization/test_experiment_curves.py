"""The experiment's score curves: AUC of each caption's latest score and of its recent mean."""

import json

import pytest

from govlab.studies.memorization import score_curves


def test_recent_auc_averages_each_caption_over_its_last_checks_once_per_check(tmp_path):
    records = [{"caption": "p", "duplicate_group": 0}, {"caption": "p", "duplicate_group": 0},
               {"caption": "a", "duplicate_group": -1}, {"caption": "b", "duplicate_group": -1}]
    checks = [(1.0, 0.0, 0.1), (0.9, 0.5, 0.0), (0.2, 1.0, 0.3)]  # scores of p (both copies), a, b
    history = [{"step": 10 * i, "threshold": 0.5, "scores": {"0": p, "1": p, "2": a, "3": b}}
               for i, (p, a, b) in enumerate(checks)]
    (tmp_path / "memorization.json").write_text(json.dumps(
        {"config": {}, "threshold": 0.5, "flagged": {}, "latest_scores": {}, "history": history}))
    curves = score_curves(tmp_path, records)
    assert [c["step"] for c in curves] == [0, 10, 20]
    assert curves[-1]["auc"] == 0.0  # the latest check alone ranks p last
    # means 0.7 (p), 0.5 (a), 0.13 (b): p first; counting p's two copies twice per check would give
    # p 0.43, below a
    assert curves[-1]["auc_recent"] == 1.0
    assert curves[-1]["planted"] == pytest.approx(0.2) and curves[-1]["others"] == pytest.approx(0.65)
    with pytest.raises(ValueError, match="recent"):
        score_curves(tmp_path, records, recent=0)
