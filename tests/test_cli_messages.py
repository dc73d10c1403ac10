"""Mistakes on the command line get one ``error:`` line that names the bad word, file or value and
what to do, in this process (no subprocess: parsing fails before any training)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from conftest import make_tiny_dataset
from lightning_transfer.commands.cli import main


def error_of(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int | str | None, str]:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err and "usage:" not in err
    return exited.value.code, err.strip().splitlines()[-1]


def test_an_unknown_command_names_the_closest_one(capsys) -> None:
    code, line = error_of(["exprot", "--ckpt_path", "x.ckpt"], capsys)
    assert code == 1
    assert line == ("error: unknown command 'exprot'; did you mean export? Commands: fit, validate, test, predict, "
                    "data, visualize, demo, lr_find, export, backbones")


@pytest.mark.parametrize(
    "option, said",
    [
        (["--model.bakcbone", "resnet50"], "unrecognized arguments: --model.bakcbone resnet50"),
        (["--model.backbon", "resnet50"], "unrecognized arguments: --model.backbon resnet50"),  # no prefixes
        (["--data.image_size", "abc"], 'Parser key "data.image_size": Expected a <class \'int\'>. Got value: abc'),
    ],
)
def test_a_bad_option_is_one_line_without_the_usage(option: list[str], said: str, capsys) -> None:
    code, line = error_of(["fit", *option], capsys)
    assert code == 2
    assert line == f"error: {said} (`lightning-transfer fit --help` lists the options)"


@pytest.mark.parametrize("command", ["validate", "test", "predict"])
def test_evaluating_without_a_checkpoint_is_refused(command: str, capsys) -> None:
    code, line = error_of([command, "--data.predict_path", "photos"], capsys)
    assert code == 1
    assert line == (
        f"error: {command} needs --ckpt_path CHECKPOINT, a .ckpt written by `lightning-transfer fit` (or `last` "
        "for the newest last.ckpt of the earlier runs); without one the head is untrained"
    )


def test_resuming_a_fit_of_another_model_is_refused(tiny_checkpoint: Path, tiny_data: Path, capsys) -> None:
    code, line = error_of(["fit", "--data.root", str(tiny_data), "--ckpt_path", str(tiny_checkpoint)], capsys)
    assert code == 1
    assert line == (
        f"error: --ckpt_path {tiny_checkpoint} is a run of vgg16 at 64 px, this command trains vgg16 at 150 px; "
        "resume with that run's config.yaml (in its version_N folder), or pass the last.ckpt of a run of this model"
    )


def test_test_needs_a_test_split(tiny_checkpoint: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    root = make_tiny_dataset(tmp_path / "no_test", {"train": 1, "val": 1})
    code, line = error_of(["test", "--ckpt_path", str(tiny_checkpoint), "--data.root", str(root),
                           "--data.num_workers", "0", "--trainer.logger", "false"], capsys)
    assert code == 1
    assert line == (f"error: '{root / 'test'}' does not exist: `test` needs a test/ split beside train/ and val/ "
                    "(`lightning-transfer data prepare` makes one)")


def test_last_names_the_newest_run_for_the_other_commands_too(
    tiny_checkpoint: Path, tiny_data: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    image = next((tiny_data / "test" / "cat").glob("*.jpg"))
    visualize = ["visualize", "activations", "--ckpt_path", "last", "--image", str(image), "--layers", "block1",
                 "--out", str(tmp_path / "viz")]
    monkeypatch.chdir(tmp_path)
    code, line = error_of(visualize, capsys)
    assert code == 1
    assert line == (
        "error: --ckpt_path last: nothing matches lightning_logs/*/checkpoints/last*.ckpt, so no run here has "
        "written one; pass a checkpoint file, or run `lightning-transfer fit` (without --ckpt_path) to make one"
    )
    run = tmp_path / "lightning_logs" / "version_3" / "checkpoints"
    run.mkdir(parents=True)
    shutil.copy(tiny_checkpoint, run / "last.ckpt")
    main(visualize)
    assert f"--ckpt_path last: {Path('lightning_logs/version_3/checkpoints/last.ckpt')}" in capsys.readouterr().out
    assert list((tmp_path / "viz").glob("*block1*.png"))
