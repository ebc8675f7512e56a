"""``python -m govlab.studies.memorization``: its arguments (the trainings themselves are mocked)."""

from unittest import mock

import pytest

from govlab.studies import memorization as experiment


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


def test_options_may_come_before_the_interventions_and_a_config_overlays_the_preset(tmp_path):
    ran = []

    def fake(cfg, out, interventions, progress):
        ran.append((interventions[0], cfg.memorization.detector, cfg.world.caption_detail))
        return {interventions[0]: {}}

    overlay = tmp_path / "c.yaml"
    overlay.write_text("world: {caption_detail: 1}\n")
    with mock.patch.object(experiment, "run_experiment", side_effect=fake):
        experiment.main([str(tmp_path), "--detector", "noise", "none", "drop"])
        experiment.main([str(tmp_path), "--config", str(overlay), "none"])
    assert ran == [("none", "noise", 0.5), ("drop", "noise", 0.5), ("none", "regeneration", 1.0)]


@pytest.mark.parametrize("text, message", [(None, "config file not found"),
                                           ("world: {caption_detail: 2}", "caption_detail must be in [0, 1]")])
def test_a_bad_config_file_is_one_error_and_nothing_is_written(tmp_path, capsys, text, message):
    overlay = tmp_path / "c.yaml"
    if text is not None:
        overlay.write_text(text)
    with mock.patch.object(experiment, "run_experiment") as run, pytest.raises(SystemExit) as e:
        experiment.main([str(tmp_path / "out"), "--config", str(overlay), "none"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err and "Traceback" not in err
    assert not run.called and not (tmp_path / "out").exists()
