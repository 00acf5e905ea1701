"""`hxr train / evaluate / predict` as a user calls them, on tiny data made here."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hxr_cli.main import build_parser, main
from hxr_cli.model_commands import RECIPE_FIELDS, apply_recipe
from hxr_model.checkpoint import load_checkpoint, save_checkpoint
from hxr_model.data import load_splits
from hxr_model.data.phantoms import PHANTOM_CLASSES
from hxr_model.models import build_model
from hxr_model.recipe import QUICK_RECIPE, RADIOGRAPH_FILE_RECIPE


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
    # MedMNIST takes the quick recipe; what the command named overrides it.
    assert report["recipe"] == "quick"
    assert report["schedule"] == {
        "prewarm_epochs": 1, "prewarm_batch_size": 32, "epochs": 4, "imbalance": "none",
        "max_memory_mb": None,
    }  # fmt: skip
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


@pytest.mark.parametrize(
    ("ref", "recipe"),
    [
        ("csv:site/manifest.csv", RADIOGRAPH_FILE_RECIPE),
        ("folder:site/images", RADIOGRAPH_FILE_RECIPE),
        ("synthetic:60+csv:site/manifest.csv", RADIOGRAPH_FILE_RECIPE),
        ("synthetic:60", QUICK_RECIPE),
        ("medmnist:site/pneumonia.npz", QUICK_RECIPE),
    ],
)
def test_unset_schedule_options_come_from_the_data_recipe(ref, recipe) -> None:
    args = build_parser().parse_args(["train", "--data", ref, "--out", "o"])
    assert apply_recipe(args) == recipe
    assert {field: getattr(args, field) for field in RECIPE_FIELDS} == recipe.model_dump(
        exclude={"name"}
    )


def test_named_options_override_the_recipe_and_none_lifts_its_budget() -> None:
    argv = ["train", "--data", "csv:m.csv", "--epochs", "3", "--imbalance", "none",
            "--max-memory-mb", "none", "--out", "o"]  # fmt: skip
    args = build_parser().parse_args(argv)
    apply_recipe(args)
    assert (args.epochs, args.imbalance, args.max_memory_mb) == (3, "none", None)
    assert args.prewarm_epochs == RADIOGRAPH_FILE_RECIPE.prewarm_epochs == 5


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


SUBSET_DATA = ["--data", "synthetic:180", "--skip-bad", "--split", "val"]


@pytest.fixture(scope="module")
def six_class_checkpoint(tmp_path_factory) -> Path:
    """An untrained phantom-class model: its outputs vary enough to score, and cost no training."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("six") / "model.pt"
    save_checkpoint(
        path,
        build_model("hxr50", len(PHANTOM_CLASSES)),
        model_name="hxr50",
        class_names=list(PHANTOM_CLASSES),
        image_size=32,
        metadata={"split_seed": 0},
    )
    return path


def pairwise_auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """The share of positive-negative pairs ranked right, ties counting half."""
    wins = (positive[:, None] > negative[None, :]).sum() + 0.5 * (
        positive[:, None] == negative[None, :]
    ).sum()
    return float(wins / (positive.size * negative.size))


def test_evaluate_on_a_class_subset_gives_the_hand_computed_metrics(
    six_class_checkpoint, capsys
) -> None:
    # The clinic lists covid19 before normal; the model's order is normal first.
    labels = {"covid19": "covid19", "normal": "normal"}
    assert main(["evaluate", "--checkpoint", str(six_class_checkpoint), *SUBSET_DATA,
                 "--labels", "covid19,normal", "--json"]) == 0  # fmt: skip
    metrics = json.loads(capsys.readouterr().out)

    val = load_splits("synthetic:180", 32, skip_bad=True, seed=0, label_map=labels).val
    images = torch.stack([val[index][0] for index in range(len(val))])
    with torch.inference_mode():
        probabilities = torch.softmax(load_checkpoint(six_class_checkpoint).model(images), 1)
    probabilities = probabilities.numpy()
    truth = np.array([PHANTOM_CLASSES.index(val.class_names[label]) for label in val.labels])
    predicted = probabilities.argmax(axis=1)
    normal, covid = PHANTOM_CLASSES.index("normal"), PHANTOM_CLASSES.index("covid19")
    recall = {c: float((predicted[truth == c] == c).mean()) for c in (normal, covid)}
    auc = {
        c: pairwise_auc(probabilities[truth == c, c], probabilities[truth != c, c])
        for c in (normal, covid)
    }

    assert metrics["n"] == len(val) and metrics["classes_present"] == ["normal", "covid19"]
    assert metrics["accuracy"] == pytest.approx(float((predicted == truth).mean()))
    assert metrics["balanced_accuracy"] == pytest.approx(np.mean(list(recall.values())))
    assert metrics["auc"] == pytest.approx(np.mean(list(auc.values())))
    for c in (normal, covid):
        entry = metrics["per_class"][PHANTOM_CLASSES[c]]
        assert entry["recall"] == pytest.approx(recall[c])
        assert entry["auc"] == pytest.approx(auc[c])
        assert entry["support"] == int((truth == c).sum()) > 0
    for name in set(PHANTOM_CLASSES) - {"normal", "covid19"}:
        entry = metrics["per_class"][name]
        assert entry["support"] == 0 and entry["recall"] is None and entry["auc"] is None
        assert metrics["undefined"][f"per_class.{name}.recall"] == f"no {name} images"
    # Every image is counted against what the model predicted, absent classes included.
    assert sum(map(sum, metrics["confusion_matrix"])) == len(val)
    assert [sum(row) for row in metrics["confusion_matrix"]] == np.bincount(
        truth, minlength=len(PHANTOM_CLASSES)
    ).tolist()


def test_evaluate_on_a_class_subset_prints_na_not_nan(six_class_checkpoint, capsys) -> None:
    assert main(["evaluate", "--checkpoint", str(six_class_checkpoint), *SUBSET_DATA,
                 "--labels", "covid19,normal"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "classes present: normal, covid19 (2 of the model's 6" in out
    assert "n/a" in out and "nan" not in out.lower()
    matrix = out.split("confusion matrix")[1].splitlines()[2:]
    assert [row.split()[0] for row in matrix] == ["normal", "covid19"]


def test_evaluate_refuses_a_class_the_model_does_not_know_by_name(
    six_class_checkpoint, capsys
) -> None:
    code = main(["evaluate", "--checkpoint", str(six_class_checkpoint), *SUBSET_DATA,
                 "--labels", "covid19,normal=pneumothorax"])  # fmt: skip
    error = capsys.readouterr().err.strip().splitlines()[-1]  # after the skipped-file list
    assert code == 2 and error.startswith("hxr: error: synthetic:180: ")
    assert "'pneumothorax'" in error and "does not know" in error


def test_export_then_predict_through_onnx_runtime_matches_pytorch(
    trained, tmp_path, capsys
) -> None:
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (the onnx extra)")
    pytest.importorskip("onnxscript", reason="onnxscript is not installed (the onnx extra)")
    _, out = trained
    onnx_file = tmp_path / "model.onnx"
    assert main(["export", "--checkpoint", str(out / "model.pt"), "--out", str(onnx_file)]) == 0
    assert "ONNX Runtime matches PyTorch" in capsys.readouterr().out
    images = []
    for index, value in enumerate((30, 140, 250)):
        pixels = np.full((40, 40), 40, np.uint8)
        pixels[10:28, 10:28] = value
        images.append(str(tmp_path / f"case{index}.png"))
        Image.fromarray(pixels).save(images[-1])
    runs = {}
    for option, model in (("--checkpoint", out / "model.pt"), ("--onnx", onnx_file)):
        assert main(["predict", option, str(model), *images, "--json"]) == 0
        runs[option] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(runs["--onnx"]) == 3
    for torch_line, onnx_line in zip(runs["--checkpoint"], runs["--onnx"], strict=True):
        assert onnx_line["class"] == torch_line["class"]
        for name, value in torch_line["probabilities"].items():
            assert onnx_line["probabilities"][name] == pytest.approx(value, abs=1e-4)


def test_predict_through_onnx_cannot_draw_gradcam(tmp_path, capsys) -> None:
    code = main(["predict", "--onnx", str(tmp_path / "m.onnx"), "x.png", "--gradcam", "cams"])
    error = capsys.readouterr().err.strip()
    assert code == 2 and "--gradcam needs the PyTorch model" in error


def test_evaluate_scores_each_source_of_the_data_apart(six_class_checkpoint, capsys) -> None:
    data = ["--data", "synthetic:120:2", "--split", "val"]
    assert main(["evaluate", "--checkpoint", str(six_class_checkpoint), *data, "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)

    val = load_splits("synthetic:120:2", 32, seed=0).val
    images = torch.stack([val[index][0] for index in range(len(val))])
    with torch.inference_mode():
        predicted = load_checkpoint(six_class_checkpoint).model(images).argmax(1).numpy()
    sources = np.array(val.sources)
    assert sorted(metrics["by_source"]) == ["scanner-0", "scanner-1"]
    for source, part in metrics["by_source"].items():
        rows = sources == source
        assert part["n"] == int(rows.sum()) > 0
        assert part["accuracy"] == pytest.approx(
            float((predicted[rows] == val.labels[rows]).mean())
        )
    assert sum(part["n"] for part in metrics["by_source"].values()) == metrics["n"]
    assert main(["evaluate", "--checkpoint", str(six_class_checkpoint), *data]) == 0
    table = capsys.readouterr().out.split("by source:")[1].splitlines()
    assert [row.split()[0] for row in table[2:]] == ["scanner-0", "scanner-1"]
