"""``python -m govlab.memorization.experiment``: its arguments (the trainings themselves are mocked)."""

from unittest import mock

import pytest

from govlab.memorization import experiment


def test_default_is_every_intervention_and_unknown_names_are_refused(tmp_path, capsys):
    ran = []

    def fake(cfg, out, interventions, progress):
        ran.append((interventions, cfg.memorization.detector))
        return {interventions[0]: {}}

    with mock.patch.object(experiment, "run_experiment", side_effect=fake):
        experiment.main([str(tmp_path)])
        assert [i for (i,), _ in ran] == list(experiment.INTERVENTIONS)
        assert {d for _, d in ran} == {"regeneration"}
        with pytest.raises(SystemExit) as e:
            experiment.main([str(tmp_path), "drop", "nope"])
    assert e.value.code == 2 and "unknown intervention 'nope'" in capsys.readouterr().err
    assert len(ran) == len(experiment.INTERVENTIONS)


def test_the_detector_option_may_come_before_the_interventions(tmp_path):
    ran = []

    def fake(cfg, out, interventions, progress):
        ran.append((interventions[0], cfg.memorization.detector))
        return {interventions[0]: {}}

    with mock.patch.object(experiment, "run_experiment", side_effect=fake):
        experiment.main([str(tmp_path), "--detector", "noise", "none", "drop"])
    assert ran == [("none", "noise"), ("drop", "noise")]
