"""The studies find the real data through `--data-root`, relative to where they run."""

import argparse
from pathlib import Path

import pytest

from experiments.shared_data import SHARED_DATASETS, add_data_root_option


def parse(*arguments: str) -> Path:
    parser = argparse.ArgumentParser()
    add_data_root_option(parser)
    return parser.parse_args(list(arguments)).data_root


def test_the_default_is_the_shared_folder_beside_the_checkout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    checkout = tmp_path / "main"
    checkout.mkdir()
    monkeypatch.chdir(checkout)
    assert parse() == tmp_path / "shared" / "data"


def test_a_given_root_is_made_absolute_for_the_run_folders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert parse("--data-root", "elsewhere") == tmp_path / "elsewhere"


def test_a_dataset_reference_names_its_reader_and_file_under_the_root() -> None:
    reference = SHARED_DATASETS["pneumoniamnist"].ref(Path("/data"))
    assert reference == "medmnist:/data/pneumoniamnist/pneumoniamnist_trainval.npz"
