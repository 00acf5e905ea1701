"""`hxr train / evaluate / predict` as a user calls them, on tiny data made here."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hxr_cli.main import main


def tiny_medmnist(path: Path, splits=("train", "val")) -> Path:
    rng = np.random.default_rng(0)
    arrays = {}
    for split, count in zip(splits, (64, 32, 32), strict=False):
        labels = rng.integers(0, 2, (count, 1)).astype(np.uint8)
        images = rng.integers(0, 90, (count, 28, 28)).astype(np.uint8)
        images[labels[:, 0] == 1, 8:20, 8:20] = 250  # a learnable "opacity"
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = images, labels
    np.savez(path, **arrays)
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("train")
    data = tiny_medmnist(root / "tiny.npz")
    out = root / "run"
    code = main(
        ["train", "--data", f"medmnist:{data}", "--model", "hxr50", "--image-size", "32",
         "--prewarm-epochs", "1", "--prewarm-batch-size", "32", "--epochs", "4",
         "--batch-size", "16", "--lr", "0.005", "--no-progress", "--out", str(out)]
    )  # fmt: skip
    assert code == 0
    return data, out


def test_train_writes_checkpoint_and_validation_metrics(trained) -> None:
    _, out = trained
    report = json.loads((out / "metrics.json").read_text())
    assert (out / "model.pt").is_file()
    assert report["model"] == "hxr50" and report["prewarm"]["epochs"] == 1
    assert report["validation"]["n"] == 32
    assert 0 <= report["validation"]["accuracy"] <= 1
    phases = (report["prewarm"], report["training"])
    assert report["peak_memory_mb"] == max(phase["peak_memory_mb"] for phase in phases)
    assert report["seconds"] == pytest.approx(sum(phase["seconds"] for phase in phases))


def test_evaluate_prints_one_json_object_matching_training(trained, capsys) -> None:
    data, out = trained
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(out / "model.pt"), "--data",
                 f"medmnist:{data}", "--split", "val", "--json"]) == 0  # fmt: skip
    metrics = json.loads(capsys.readouterr().out)
    for key in ("accuracy", "balanced_accuracy", "auc", "per_class", "confusion_matrix", "n"):
        assert key in metrics
    report = json.loads((out / "metrics.json").read_text())
    assert metrics["accuracy"] == pytest.approx(report["validation"]["accuracy"])
    assert sum(map(sum, metrics["confusion_matrix"])) == metrics["n"] == 32


def test_evaluate_names_a_missing_split(trained, capsys) -> None:
    data, out = trained
    code = main(["evaluate", "--checkpoint", str(out / "model.pt"), "--data",
                 f"medmnist:{data}", "--split", "test"])  # fmt: skip
    error = capsys.readouterr().err.strip()
    assert code != 0
    assert "no 'test' split" in error and len(error.splitlines()) == 1


def test_predict_classifies_images_and_writes_gradcam(trained, tmp_path, capsys) -> None:
    _, out = trained
    images = []
    for index, value in enumerate((30, 250)):
        pixels = np.full((40, 40), 40, np.uint8)
        pixels[10:28, 10:28] = value
        images.append(tmp_path / f"case{index}.png")
        Image.fromarray(pixels).save(images[-1])
    capsys.readouterr()
    code = main(["predict", "--checkpoint", str(out / "model.pt"), *map(str, images),
                 "--gradcam", str(tmp_path / "cam"), "--json"])  # fmt: skip
    assert code == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [Path(line["image"]).name for line in lines] == ["case0.png", "case1.png"]
    for line in lines:
        assert sum(line["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
        assert Image.open(line["gradcam"]).size == (32, 32)


def test_predict_reports_a_broken_image_and_continues(trained, tmp_path, capsys) -> None:
    _, out = trained
    broken = tmp_path / "broken.png"
    broken.write_text("not an image")
    good = tmp_path / "good.png"
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(good)
    code = main(["predict", "--checkpoint", str(out / "model.pt"), str(broken), str(good)])
    captured = capsys.readouterr()
    assert code != 0
    assert "broken.png" in captured.err and "good.png" in captured.out


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["train", "--data", "medmnist:/nonexistent/x.npz", "--out", "o"], "x.npz"),
        (["evaluate", "--checkpoint", "/nonexistent/model.pt", "--data", "synthetic:8"],
         "model.pt"),
    ],
)  # fmt: skip
def test_user_errors_are_one_line_without_traceback(argv, expected, capsys) -> None:
    code = main(argv)
    error = capsys.readouterr().err.strip()
    assert code == 2
    assert error.startswith("hxr: error:") and expected in error
    assert len(error.splitlines()) == 1 and "Traceback" not in error


def test_corrupt_checkpoint_is_one_line(tmp_path, capsys) -> None:
    bad = tmp_path / "model.pt"
    bad.write_bytes(b"\x00garbage")
    code = main(["predict", "--checkpoint", str(bad), str(bad)])
    error = capsys.readouterr().err.strip()
    assert code == 2 and "model.pt" in error and len(error.splitlines()) == 1


def test_evaluate_reuses_the_training_split_of_an_unsplit_source(tmp_path, capsys) -> None:
    out = tmp_path / "run"
    argv = ["train", "--data", "synthetic:60", "--model", "hxr50", "--image-size", "32",
            "--epochs", "1", "--seed", "7", "--no-progress", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(out / "model.pt"), "--data", "synthetic:60",
                 "--split", "val", "--json"]) == 0  # fmt: skip
    metrics = json.loads(capsys.readouterr().out)
    report = json.loads((out / "metrics.json").read_text())
    assert metrics["n"] == report["validation"]["n"]
    assert metrics["accuracy"] == pytest.approx(report["validation"]["accuracy"])
