"""Audit of every `hxr` sub-command against the mistakes users make: missing or corrupt files,
unknown names, bad option values, malformed site TOMLs. Each must exit non-zero with exactly one
stderr line that names the problem and no traceback; `--debug` brings the traceback back."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from pydantic import ValidationError

from hxr_cli.main import describe_validation_error, main
from hxr_model.checkpoint import save_checkpoint
from hxr_model.errors import HXRError
from hxr_model.models import build_model
from hxr_model.prewarm import PrewarmConfig
from hxr_model.training import TrainConfig


@dataclass(frozen=True)
class Files:
    """What the cases point at, all under one temporary folder."""

    root: Path
    checkpoint: Path  # a real one: hxr50, classes normal/pneumonia, 28 px
    truncated: Path  # its first half
    plain_file: Path  # where a folder is expected
    image: Path
    garbage_npz: Path
    huge_label_npz: Path
    malformed_toml: Path
    bad_field_toml: Path
    bad_device_toml: Path
    missing_data_toml: Path

    @property
    def missing(self) -> Path:
        return self.root / "absent" / "nothing.npz"

    @property
    def out(self) -> Path:
        return self.root / "out"

    def argv(self, command: str) -> list[str]:
        """`command` with `{field}` placeholders filled in (no path here holds a space)."""
        fields = {name: getattr(self, name) for name in (*vars(self), "missing", "out")}
        return command.format_map(fields).split()


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Files:
    root = tmp_path_factory.mktemp("user-errors")
    checkpoint = root / "model.pt"
    save_checkpoint(
        checkpoint,
        build_model("hxr50", 2),
        model_name="hxr50",
        class_names=["normal", "pneumonia"],
        image_size=28,
    )
    content = checkpoint.read_bytes()
    (root / "truncated.pt").write_bytes(content[: len(content) // 2])
    (root / "plain-file").write_text("not a folder")
    Image.fromarray(np.full((40, 40), 90, np.uint8)).save(root / "case.png")
    (root / "garbage.npz").write_bytes(b"\x00garbage")
    np.savez(
        root / "huge-label.npz",
        train_images=np.zeros((2, 28, 28), np.uint8),
        train_labels=np.array([0, 10**12]),
    )
    tomls = {
        "malformed.toml": "name = \n",
        "bad-field.toml": 'name = "north"\ndata = "synthetic:8"\nprivacy = "everything"\n',
        "bad-device.toml": 'name = "north"\ndata = "synthetic:8"\ndevice = "tpu"\n',
        "missing-data.toml": f'name = "north"\ndata = "medmnist:{root / "absent.npz"}"\n',
    }
    for name, text in tomls.items():
        (root / name).write_text(text)
    return Files(
        root,
        checkpoint,
        root / "truncated.pt",
        root / "plain-file",
        root / "case.png",
        root / "garbage.npz",
        root / "huge-label.npz",
        *(root / name for name in tomls),
    )


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HXR_CACHE_DIR", str(tmp_path / "cache"))


NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
SMALL = "--data synthetic:30 --image-size 28 --no-progress"


def case(name: str, command: str, expected: str, *marks: pytest.MarkDecorator) -> object:
    """One audit case: the command line (`{field}` names a `Files` path) and what its one
    stderr line must contain."""
    return pytest.param(command, expected, id=name, marks=marks)


CASES = [
    case("no-command", "", "required: COMMAND"),
    case("unknown-command", "frobnicate", "invalid choice: 'frobnicate'"),
    case(
        "train-missing-data", "train --data medmnist:{missing} --out {out}", "nothing.npz: no such"
    ),
    case(
        "train-unknown-model",
        "train --model resnet9000 --out {out}",
        "invalid choice: 'resnet9000'",
    ),
    case("train-not-a-number", "train --epochs many --out {out}", "invalid int value: 'many'"),
    case("train-negative-epochs", f"train {SMALL} --epochs -1 --out {{out}}", "'epochs'"),
    case(
        "train-negative-seed", f"train {SMALL} --seed -1 --out {{out}}", "seed must be an integer"
    ),
    case("train-unknown-device", "train --device tpu --out {out}", "argument --device"),
    case(
        "train-budget-not-a-number",
        "train --max-memory-mb lots --out {out}",
        "--max-memory-mb: 'lots' is neither a number of MB nor 'none'",
    ),
    case("train-budget-negative", "train --max-memory-mb -5 --out {out}", "must be positive"),
    case("train-out-is-a-file", f"train {SMALL} --epochs 0 --out {{plain_file}}", "File exists"),
    case(
        "evaluate-missing-checkpoint",
        "evaluate --checkpoint {missing} --data synthetic:8",
        "nothing.npz: no such checkpoint file",
    ),
    case(
        "evaluate-truncated-checkpoint",
        "evaluate --checkpoint {truncated} --data synthetic:8",
        "truncated.pt: not a checkpoint",
    ),
    case(
        "evaluate-unknown-classes",
        "evaluate --checkpoint {checkpoint} --data synthetic:8",
        "'bacterial_pneumonia', 'viral_pneumonia', 'covid19', 'tuberculosis', 'emphysema' that "
        "the model does not know (its classes: normal, pneumonia)",
    ),
    case("evaluate-without-data", "evaluate --checkpoint {checkpoint}", "required: --data"),
    case(
        "predict-truncated-checkpoint",
        "predict --checkpoint {truncated} {image}",
        "truncated.pt: not a checkpoint",
    ),
    case(
        "predict-missing-image",
        "predict --checkpoint {checkpoint} {missing}",
        "nothing.npz: no such file",
    ),
    case(
        "predict-gradcam-into-a-file",
        "predict --checkpoint {checkpoint} {image} --gradcam {plain_file}",
        "plain-file: File exists",
    ),
    case("data-check-missing-file", "data check medmnist:{missing}", "nothing.npz: no such file"),
    case("data-check-unknown-reference", "data check dicom:/srv", "unknown data reference"),
    case("data-check-not-an-archive", "data check medmnist:{garbage_npz}", "not a .npz archive"),
    case("data-check-absurd-label", "data check medmnist:{huge_label_npz}", "at most 1000 classes"),
    case("data-check-bad-size", "data check synthetic:8 --image-size 2", "image size must be"),
    case("data-check-bad-label-map", "data check synthetic:8 --labels a,=b", "bad label map item"),
    case(
        "data-partition-no-sites",
        "data partition synthetic:30 --image-size 28 --sites 0 --partition iid",
        "number of sites must be at least 1",
    ),
    case(
        "data-partition-negative-seed",
        "data partition synthetic:30 --image-size 28 --sites 2 --partition iid --seed -5",
        "seed must be an integer",
    ),
    case("simulate-no-sites", "simulate --sites 0 --out {out}", "'sites'"),
    case("simulate-resume-without-out", "simulate --resume", "--resume needs --out"),
    case(
        "simulate-missing-data",
        "simulate --data medmnist:{missing} --out {out}",
        "nothing.npz: no such file",
    ),
    case("simulate-cuda-without-cuda", "simulate --device cuda", "no CUDA device", NO_CUDA),
    case("info-unknown-model", "info hxr999", "unknown model 'hxr999'"),
    case("info-bad-resolution", "info hxr50 --resolution big", "invalid int value: 'big'"),
    case("bench-no-trials", "bench --models hxr50 --trials 0", "'trials'"),
    case("bench-cuda-without-cuda", "bench --device cuda", "no CUDA device", NO_CUDA),
    case(
        "certs-no-supernodes", "certs --out {out} --supernodes 0", "--supernodes must be at least"
    ),
    case("certs-out-is-a-file", "certs --out {plain_file} --supernodes 1", "plain-file"),
    case("site-check-missing-toml", "site check {root}/site.toml", "site.toml does not exist"),
    case("site-check-malformed-toml", "site check {malformed_toml}", "is not readable TOML"),
    case("site-check-bad-field", "site check {bad_field_toml}", "invalid value for 'privacy'"),
    case("site-check-bad-device", "site check {bad_device_toml}", "invalid value for 'device'"),
    case("site-check-missing-data", "site check {missing_data_toml}", "absent.npz: no such file"),
]


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """Exit status and stderr, whether `main` returned or argparse exited."""
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as exit_:
        code = exit_.code
    return int(code or 0), capsys.readouterr().err


@pytest.mark.parametrize(("command", "expected"), CASES)
def test_user_errors_are_one_line_naming_the_problem(
    command: str, expected: str, files: Files, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = run(files.argv(command), capsys)
    lines = err.splitlines()
    assert code != 0
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("hxr") and "error: " in lines[0] and expected in lines[0], err


@pytest.mark.parametrize(
    ("command", "raised"),
    [
        ("data check medmnist:{missing}", HXRError),
        ("bench --models hxr50 --trials 0", ValidationError),
        ("certs --out {plain_file} --supernodes 1", OSError),
    ],
    ids=["hxr-error", "validation-error", "os-error"],
)
def test_debug_lets_the_error_through_with_its_traceback(
    command: str, raised: type[Exception], files: Files
) -> None:
    with pytest.raises(raised):
        main(["--debug", *files.argv(command)])


@pytest.mark.slow  # two cold starts of the CLI (torch, torchvision, pydantic models)
def test_the_installed_console_script_behaves_the_same(tmp_path: Path) -> None:
    script = Path(sys.executable).with_name("hxr")
    assert script.is_file(), "install the project (pip install -e .) to get the hxr script"
    argv = ["data", "check", f"csv:{tmp_path / 'manifest.csv'}"]
    env = os.environ | {"HXR_CACHE_DIR": str(tmp_path / "cache")}
    plain = subprocess.run([script, *argv], capture_output=True, text=True, env=env, check=False)
    debug = subprocess.run(
        [script, "--debug", *argv], capture_output=True, text=True, env=env, check=False
    )
    assert plain.returncode == 2
    assert plain.stderr.splitlines() == [
        f"hxr: error: csv:{tmp_path / 'manifest.csv'}: no such file"
    ]
    assert debug.returncode == 1
    assert "Traceback (most recent call last)" in debug.stderr
    assert "hxr_model.errors.DataError" in debug.stderr


OPTION_VALUES = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
OPTION_NAMES = st.sampled_from(sorted({*TrainConfig.model_fields, *PrewarmConfig.model_fields}))


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from([TrainConfig, PrewarmConfig]),
    st.dictionaries(OPTION_NAMES | st.text(min_size=1, max_size=6), OPTION_VALUES, max_size=5),
)
def test_any_training_options_validate_or_read_as_one_line(
    config: type[TrainConfig] | type[PrewarmConfig], options: dict[str, object]
) -> None:
    """What `hxr train` builds from its options; a bad value reaches the user as one line."""
    try:
        config(**options)
    except ValidationError as error:
        message = describe_validation_error(error)
        assert len(message.splitlines()) == 1, message
        assert message.startswith("invalid value for ")
        assert "Value error, " not in message
