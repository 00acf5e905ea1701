"""Everything a federated run leaves on disk, and how a crashed run picks up again.

Layout of a run directory:
  rounds.jsonl                 one line per completed round: aggregated and per-site metrics,
                               failures, and `weights_sha256` of the global weights at its start
                               and end (`weights_digest`)
  sites/<site>.csv             the same per-site numbers as a table, one row per round
  gradcam/<site>/round-NNN/    Grad-CAM PNGs the site's privacy policy allowed
  checkpoints/round-NNN.pt     the global model after each round (hxr_model.checkpoint format)
  checkpoints/server_state.pt  what resuming needs: round, all global weights, optimiser moments

A round counts as completed when `server_state.pt` names it; that file is written last and
atomically, so a crash at any point leaves the previous round's state intact. Records of a round
that had not been committed are dropped on resume, so no round is lost or repeated.
"""

from __future__ import annotations

import csv
import fcntl
import hashlib
import io
import json
import math
import pickle
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hxr_model.atomic_files import write_atomic, write_text_atomic
from hxr_model.errors import CheckpointError, ConfigError
from server.round_record import RoundRecord

STATE_FORMAT = "hybridnet-xr-federation-state"
LOCK_NAME = ".lock"
STATE_VERSION = 1

ArrayDict = dict[str, np.ndarray]


@dataclass
class ResumeState:
    """A committed round: the weights after it and each phase's server-optimiser moments."""

    round: int
    arrays: ArrayDict
    strategy: dict[str, dict[str, ArrayDict]] = field(default_factory=dict)
    fingerprint: dict[str, Any] = field(default_factory=dict)


def json_ready(value: Any) -> Any:
    """Replace NaN/inf (undefined metrics) with None: the files must be strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_ready(v) for v in value]
    return value


def weights_digest(arrays: Mapping[str, np.ndarray]) -> str:
    """SHA-256 over names, dtypes, shapes and values: equal digests mean equal weights, so the
    records show which global model each round started from."""
    digest = hashlib.sha256()
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}|{array.dtype.str}|{array.shape}|".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def _tensors(arrays: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {name: torch.from_numpy(np.ascontiguousarray(a)) for name, a in arrays.items()}


def _arrays(tensors: Mapping[str, torch.Tensor]) -> ArrayDict:
    return {name: tensor.numpy() for name, tensor in tensors.items()}


def _flatten(prefix: str, values: Mapping[str, Any], class_names: Sequence[str]) -> dict:
    """Scalar columns for a CSV row; per-class lists become one column per class."""
    row: dict[str, Any] = {}
    for key, value in values.items():
        if key == "confusion-matrix":
            continue
        if isinstance(value, list) and len(value) == len(class_names):
            for name, item in zip(class_names, value, strict=True):
                row[f"{prefix}{key}:{name}"] = item
        elif not isinstance(value, list):
            row[f"{prefix}{key}"] = value
    return row


class RunStore:
    """Reads and writes one run directory (see the module docstring for the layout)."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.rounds_path = self.run_dir / "rounds.jsonl"
        self.sites_dir = self.run_dir / "sites"
        self.gradcam_dir = self.run_dir / "gradcam"
        self.checkpoints_dir = self.run_dir / "checkpoints"
        self.state_path = self.checkpoints_dir / "server_state.pt"

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the run folder for one run: a second run writing the same folder would
        interleave rounds and corrupt the resume state."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with open(self.run_dir / LOCK_NAME, "a+b") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise ConfigError(
                    f"{self.run_dir} is in use by another run; wait for it or pick another out-dir"
                ) from None
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def round_checkpoint(self, server_round: int) -> Path:
        return self.checkpoints_dir / f"round-{server_round:03d}.pt"

    def has_results(self) -> bool:
        return self.state_path.exists() or self.rounds_path.exists()

    def read_rounds(self) -> list[RoundRecord]:
        if not self.rounds_path.exists():
            return []
        lines = self.rounds_path.read_text(encoding="utf-8").splitlines()
        return [RoundRecord.model_validate_json(line) for line in lines if line.strip()]

    def _write_rounds(self, records: Sequence[RoundRecord]) -> None:
        text = "".join(
            json.dumps(json_ready(record.model_dump()), sort_keys=True) + "\n" for record in records
        )
        write_text_atomic(self.rounds_path, text)

    def append_round(self, record: RoundRecord, class_names: Sequence[str]) -> None:
        """Add a round to rounds.jsonl (replacing a stale copy of it) and refresh the CSVs."""
        records = [r for r in self.read_rounds() if r.round < record.round]
        records.append(RoundRecord.model_validate(json_ready(record.model_dump())))
        self._write_rounds(records)
        self.write_site_tables(records, class_names)

    def write_site_tables(self, records: Sequence[RoundRecord], class_names: Sequence[str]) -> None:
        rows: dict[str, list[dict[str, Any]]] = {}
        for record in records:
            for site in sorted(set(record.train.sites) | set(record.evaluate.sites)):
                row = {"round": record.round, "phase": record.phase}
                row |= _flatten("train:", record.train.sites.get(site, {}), class_names)
                row |= _flatten("evaluate:", record.evaluate.sites.get(site, {}), class_names)
                rows.setdefault(site, []).append(row)
        for site, site_rows in rows.items():
            columns = list(dict.fromkeys(key for row in site_rows for key in row))
            buffer = io.StringIO()
            writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
            writer.writeheader()
            writer.writerows(site_rows)
            write_text_atomic(self.sites_dir / f"{site}.csv", buffer.getvalue())

    def save_state(self, state: ResumeState) -> None:
        """The commit point of a round: after this returns, the round is never run again."""
        payload = {
            "format": STATE_FORMAT,
            "version": STATE_VERSION,
            "round": state.round,
            "fingerprint": json.dumps(json_ready(state.fingerprint), sort_keys=True),
            "arrays": _tensors(state.arrays),
            "strategy": {
                phase: {slot: _tensors(arrays) for slot, arrays in slots.items()}
                for phase, slots in state.strategy.items()
            },
        }
        write_atomic(self.state_path, lambda handle: torch.save(payload, handle))

    def load_state(self) -> ResumeState | None:
        """The last committed round, or None for a fresh run directory. Never unpickles code."""
        if not self.state_path.exists():
            return None
        if not zipfile.is_zipfile(self.state_path):
            raise CheckpointError(f"{self.state_path}: corrupt server state")
        try:
            payload = torch.load(self.state_path, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, OSError) as error:
            reason = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise CheckpointError(
                f"{self.state_path}: unreadable server state ({reason})"
            ) from None
        if not isinstance(payload, dict) or payload.get("format") != STATE_FORMAT:
            raise CheckpointError(f"{self.state_path}: not a HybridNet-XR federation state")
        if payload.get("version") != STATE_VERSION:
            raise CheckpointError(
                f"{self.state_path}: unsupported version {payload.get('version')}"
            )
        return ResumeState(
            round=int(payload["round"]),
            arrays=_arrays(payload["arrays"]),
            strategy={
                phase: {slot: _arrays(tensors) for slot, tensors in slots.items()}
                for phase, slots in payload["strategy"].items()
            },
            fingerprint=json.loads(payload["fingerprint"]),
        )

    def discard_after(self, server_round: int, class_names: Sequence[str]) -> None:
        """Forget records of rounds after the committed one (they will be run again)."""
        records = [r for r in self.read_rounds() if r.round <= server_round]
        self._write_rounds(records)
        self.write_site_tables(records, class_names)

    def gallery_files(self) -> Iterator[Path]:
        return iter(sorted(self.gradcam_dir.rglob("*.png")))
