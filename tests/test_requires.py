"""Runs that depend on runs (`model.requires`): pinned, loaded, passed to loss and eval."""

import json

import pytest

from genzoo import cli, models, workdir

STUDENT = """
from genzoo import experiment


def get_config(variant=None):
    c = experiment.load("gpt_shakespeare_char", "smoke")
    c.experiment.name = "student"
    c.model = dict(family="toy_student", vocab_size=-1, requires={requires!r})
    c.train.steps = 6
    c.log.every_steps = 1
    c.optim.update(lr=0.02, min_lr=0.02, warmup_steps=0, weight_decay=0.0)
    return c
"""


@pytest.fixture
def toys(monkeypatch):
    monkeypatch.setitem(models.FAMILIES, "toy_state", "toy_families")  # tests/toy_*.py
    monkeypatch.setitem(models.FAMILIES, "toy_student", "toy_student")


def _train(capsys, *argv):
    code = cli.main(["train", *argv])
    return code, capsys.readouterr().err


def _student(tmp_path, requires) -> str:
    path = tmp_path / f"student_{len(list(tmp_path.glob('student_*')))}.py"
    path.write_text(STUDENT.format(requires=requires))
    return str(path)


def test_a_required_run_is_pinned_loaded_and_passed_to_loss_and_eval(toys, tmp_path, capsys):
    teacher, student = tmp_path / "teacher", tmp_path / "student"
    common = (
        "--variant",
        "smoke",
        "--set",
        "model.family=toy_state",
        "--set",
        "log.progress=false",
        "--set",
        "checkpoint.every_steps=2",  # steps 2 and 4 saved: the pin must take the newest
    )
    assert _train(capsys, "gpt_shakespeare_char", "--workdir", str(teacher), *common,
                  "--set", "train.steps=4", "--set", "checkpoint.keep=5")[0] == 0  # fmt: skip
    experiment_file = _student(tmp_path, {"teacher": str(teacher)})
    assert _train(capsys, experiment_file, "--workdir", str(student))[0] == 0
    saved = json.loads((student / "config.json").read_text())
    assert saved["model"]["requires"] == {"teacher": f"{teacher}@4"}
    rows = [json.loads(x) for x in (student / "metrics.jsonl").read_text().splitlines()]
    losses = [r["train/loss"] for r in rows if "train/loss" in r]
    assert losses[-1] < 0.5 * losses[0]  # it learns the teacher's table: deps reach `loss`
    # The teacher trains on; the student stays pinned to step 4, in eval and on resume.
    assert _train(capsys, "gpt_shakespeare_char", "--workdir", str(teacher), *common,
                  "--set", "train.steps=8", "--set", "checkpoint.keep=5")[0] == 0  # fmt: skip
    run = workdir.open_run(student)
    assert run.deps["teacher"].step == 4 and run.step == 6
    code = cli.main(["eval", "--workdir", str(student), "--json"])
    figures = json.loads(capsys.readouterr().out)
    assert code == 0 and 0 <= figures["loss"] < losses[0]
    assert _train(capsys, experiment_file, "--workdir", str(student), "--set",
                  "train.steps=8")[0] == 0  # fmt: skip
    saved = json.loads((student / "config.json").read_text())
    assert saved["model"]["requires"] == {"teacher": f"{teacher}@4"}


@pytest.mark.parametrize(
    "requires, message",
    [
        ({}, "must name ['teacher']"),
        ({"teacher": "nowhere"}, "nowhere is no trained run; train it first"),
        ({"teacher": "TEACHER@99"}, "has no step 99"),
        ({"teacher": "TEACHER", "critic": "TEACHER"}, "unknown ['critic']"),
    ],
)
def test_a_missing_or_wrong_dependency_is_one_line_and_writes_nothing(
    toys, tmp_path, capsys, requires, message
):
    teacher = tmp_path / "teacher"
    assert _train(capsys, "gpt_shakespeare_char", "--variant", "smoke", "--workdir", str(teacher),
                  "--set", "model.family=toy_state", "--set", "train.steps=2")[0] == 0  # fmt: skip
    requires = {k: v.replace("TEACHER", str(teacher)) for k, v in requires.items()}
    code, err = _train(capsys, _student(tmp_path, requires), "--workdir", str(tmp_path / "s"))
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert "genzoo chain" not in err  # a file outside experiments/: chain would not find it
    assert not (tmp_path / "s").exists()


def test_an_untrained_link_names_the_chain_command(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # no runs/ here: dalle_shapes' tokenizer and CLIP are missing
    code, err = _train(capsys, "dalle_shapes", "--variant", "smoke")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "runs/dvae_shapes_smoke is no trained run" in err or "runs/clip_shapes_smoke" in err
    assert err.rstrip().endswith("genzoo chain dalle_shapes --variant smoke")
    assert not (tmp_path / "runs").exists()


def test_a_dependency_of_the_wrong_kind_is_refused(toys, tmp_path, capsys, monkeypatch):
    import toy_student

    monkeypatch.setattr(toy_student, "REQUIRES", {"teacher": "image_generator"})
    teacher = tmp_path / "teacher"
    assert _train(capsys, "gpt_shakespeare_char", "--variant", "smoke", "--workdir", str(teacher),
                  "--set", "model.family=toy_state", "--set", "train.steps=2")[0] == 0  # fmt: skip
    code, err = _train(capsys, _student(tmp_path, {"teacher": str(teacher)}), "--workdir",
                       str(tmp_path / "s"))  # fmt: skip
    assert code == 2 and "is of kind language_model, not image_generator" in err
