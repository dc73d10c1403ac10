"""Top losses: the test images the model got most confidently wrong, with Grad-CAM."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest
import torch
from lightning import Trainer
from PIL import Image

from conftest import TINY_SIZE
from lightning_transfer.callbacks import TestReport
from lightning_transfer.callbacks.top_losses import CSV, PNG, rank_top_losses
from lightning_transfer.data import ImageFolderDataModule, load_rgb
from lightning_transfer.interpret import image_batch
from lightning_transfer.model import TransferClassifier, load_model
from lightning_transfer.utils.errors import UserError


def test_mistakes_come_first_most_confident_first_then_the_least_confident_right_ones() -> None:
    """Three classes: image ``d`` is right with a lower true-class probability (0.4) than the wrong
    ``b`` (0.45), and still comes after every mistake."""
    paths = ["a", "b", "c", "d", "e"]
    labels = torch.tensor([0, 1, 2, 0, 1])
    probabilities = torch.tensor([
        [0.90, 0.05, 0.05],  # a: right, confident
        [0.50, 0.45, 0.05],  # b: wrong (predicted 0)
        [0.10, 0.80, 0.10],  # c: wrong, more confidently (true class at 0.1)
        [0.40, 0.30, 0.30],  # d: right, unsure
        [0.20, 0.70, 0.10],  # e: right
    ])
    ranked = rank_top_losses(paths, labels, probabilities, 4)
    assert [item.path for item in ranked] == ["c", "b", "d", "e"]
    assert [(item.label, item.predicted) for item in ranked[:2]] == [(2, 1), (1, 0)]
    assert ranked[0].p_true == pytest.approx(0.1) and ranked[0].p_predicted == pytest.approx(0.8)
    assert ranked[0].loss == pytest.approx(2.302585, rel=1e-6)
    assert len(rank_top_losses(paths, labels, probabilities, 16)) == 5


def test_a_negative_count_is_refused() -> None:
    with pytest.raises(UserError, match="--report.top_losses -1"):
        TestReport(top_losses=-1)


def predicted_dog(model: TransferClassifier, paths: list[Path]) -> list[float]:
    with torch.inference_mode():
        batch = image_batch(model.backbone, [load_rgb(path) for path in paths], TINY_SIZE)
        return model(batch).softmax(dim=1)[:, model.class_names.index("dog")].tolist()


@pytest.mark.slow
def test_a_mislabelled_image_comes_first(tiny_checkpoint: Path, tiny_data: Path, tmp_path: Path) -> None:
    """A test folder of images the checkpoint classifies right, plus the dog it is surest of filed
    under cat/: that image heads the CSV, and the grid is drawn; ``top_losses 0`` writes neither."""
    model = load_model(tiny_checkpoint)
    candidates = sorted((tiny_data / "test").glob("*/*.jpg"))
    p_dog = dict(zip(candidates, predicted_dog(model, candidates)))
    mislabelled = max((path for path in candidates if path.parent.name == "dog"), key=p_dog.get)
    assert p_dog[mislabelled] > 0.5, "the checkpoint should recognize at least one dog"
    root = tmp_path / "data"
    shutil.copytree(tiny_data / "train", root / "train")  # class names come from train/
    for path in candidates:
        right = (p_dog[path] > 0.5) == (path.parent.name == "dog")
        if right and path != mislabelled:
            (root / "test" / path.parent.name).mkdir(parents=True, exist_ok=True)
            shutil.copy(path, root / "test" / path.parent.name / path.name)
    (root / "test" / "cat").mkdir(parents=True, exist_ok=True)
    shutil.copy(mislabelled, root / "test" / "cat" / "mislabelled.jpg")

    def test(top_losses: int, folder: Path) -> None:
        data = ImageFolderDataModule(str(root), image_size=TINY_SIZE, num_workers=0, batch_size=2)
        trainer = Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False,
                          callbacks=[TestReport(str(folder), top_losses=top_losses)])
        trainer.test(model, data)

    test(3, tmp_path / "report")
    with (tmp_path / "report" / CSV).open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 3
    assert (Path(rows[0]["path"]).name, rows[0]["true"], rows[0]["predicted"]) == ("mislabelled.jpg", "cat", "dog")
    assert float(rows[0]["p_predicted"]) == pytest.approx(p_dog[mislabelled], abs=1e-5)
    assert all(row["true"] == row["predicted"] for row in rows[1:])
    with Image.open(tmp_path / "report" / PNG) as image:
        assert image.format == "PNG" and image.width > image.height
    test(0, tmp_path / "off")
    assert (tmp_path / "off" / "test_report.json").is_file()
    assert not (tmp_path / "off" / CSV).exists() and not (tmp_path / "off" / PNG).exists()
