"""The checkpoint folder a training run writes, and reading it back.

::

    <folder>/
      config.json            task, the full training config (backbone, LoRA, head, optimiser, splits),
                             the data description, the backbone and predictor fingerprints
      data_fingerprint.json  hashes of the whole dataset and of each split, with sizes
      feature_scaler.json    (regressor) the feature normalisation fitted on the training split
      <task>/                the LoRA adapter in peft's format + head.safetensors + head.json
      metrics.json           training history and validation metrics
      evaluation.json        written by ``evaluate``: held-out metrics and baselines

The folder is written under a scratch name beside its target and swapped in by rename
(``models.folders``), so a crash leaves the old checkpoint or the new one, never half, and scratch
folders a killed run left are removed by the next write. Only a missing folder, an empty one or a
checkpoint is written over: any other folder is refused, so ``train --out`` cannot delete a user's files.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models import folders

CONFIG_FILE = "config.json"
FINGERPRINT_FILE = "data_fingerprint.json"
SCALER_FILE = "feature_scaler.json"
METRICS_FILE = "metrics.json"
EVALUATION_FILE = "evaluation.json"


class CheckpointError(ValueError):
    """A checkpoint folder is missing, incomplete, or does not fit what it is used with."""


@dataclass(frozen=True, slots=True)
class Checkpoint:
    folder: Path
    task: str
    config: dict[str, Any]
    data_fingerprint: dict[str, Any]
    metrics: dict[str, Any]
    scaler: dict[str, Any] | None


def is_checkpoint(folder: Path) -> bool:
    """Whether ``folder`` holds a checkpoint (a ``config.json`` naming its task), complete or not."""
    try:
        config = json.loads((folder / CONFIG_FILE).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and isinstance(config.get("task"), str)


def check_output_folder(folder: str | Path) -> Path:
    """``folder`` if a checkpoint may be written there (missing, empty or a checkpoint); otherwise a
    ``CheckpointError`` saying why. Called before training, so a bad ``--out`` fails in a second."""
    folder = Path(folder)
    try:
        folders.refuse_unless_replaceable(folder, is_checkpoint, "checkpoint")
    except folders.FolderError as exc:
        raise CheckpointError(str(exc)) from None
    return folder


def write_checkpoint(folder: str | Path, predictor: Any, task: str, config: dict[str, Any],
                     data_fingerprint: dict[str, Any], metrics: dict[str, Any],
                     scaler: dict[str, Any] | None = None) -> Path:
    """Write the checkpoint to ``folder``, replacing a checkpoint there; a folder that is neither
    empty nor a checkpoint is refused (``CheckpointError``) and left as it was."""
    folder = check_output_folder(folder)

    def fill(scratch: Path) -> None:
        predictor.save_task(task, scratch / task)
        full = {"task": task, **config, "backbone_fingerprint": predictor.backbone.fingerprint,
                "predictor_fingerprint": predictor.fingerprint(task)}
        _write(scratch / CONFIG_FILE, full)
        _write(scratch / FINGERPRINT_FILE, data_fingerprint)
        _write(scratch / METRICS_FILE, metrics)
        if scaler is not None:
            _write(scratch / SCALER_FILE, scaler)

    try:
        folders.write(folder, fill, is_checkpoint, "checkpoint")
    except folders.FolderError as exc:
        raise CheckpointError(str(exc)) from None
    return folder


def read_checkpoint(folder: str | Path, task: str | None = None) -> Checkpoint:
    folder = Path(folder)
    if not (folder / CONFIG_FILE).is_file():
        raise CheckpointError(f"{folder} is not a checkpoint folder (no {CONFIG_FILE}); train one first")
    config = json.loads((folder / CONFIG_FILE).read_text())
    found = config.get("task")
    if task is not None and found != task:
        raise CheckpointError(f"{folder} holds a {found!r} checkpoint, not a {task!r} one")
    if not (folder / found).is_dir():
        raise CheckpointError(f"{folder} has no {found}/ adapter folder (incomplete checkpoint)")
    scaler_path = folder / SCALER_FILE
    return Checkpoint(
        folder=folder, task=found, config=config,
        data_fingerprint=_read(folder / FINGERPRINT_FILE), metrics=_read(folder / METRICS_FILE),
        scaler=json.loads(scaler_path.read_text()) if scaler_path.is_file() else None,
    )


def load_into(predictor: Any, checkpoint: Checkpoint) -> None:
    """Load the checkpoint's adapter and head into ``predictor``, checking the backbone matches."""
    expected = checkpoint.config.get("backbone_fingerprint")
    if expected and expected != predictor.backbone.fingerprint:
        raise CheckpointError(
            f"{checkpoint.folder} was trained on backbone {expected}, but the loaded backbone is "
            f"{predictor.backbone.fingerprint} (another model, seed or precision)")
    predictor.load_task(checkpoint.task, checkpoint.folder / checkpoint.task)


def write_json(path: Path, data: dict[str, Any]) -> None:
    _write(path, data)


def _write(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=1, allow_nan=True, default=_plain) + "\n")


def _read(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def config_from_dict(cls: type, data: dict[str, Any]) -> Any:
    """Rebuild a (possibly nested) frozen config dataclass from ``dataclasses.asdict`` output,
    rejecting unknown keys with the valid ones listed."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise CheckpointError(f"unknown {cls.__name__} setting(s) {', '.join(unknown)}; valid: {', '.join(fields)}")
    hints = typing.get_type_hints(cls)
    values = {}
    for name, value in data.items():
        kind = hints[name]
        if dataclasses.is_dataclass(kind) and isinstance(value, dict):
            values[name] = config_from_dict(kind, value)
        elif isinstance(value, list) and _is_tuple(kind):
            values[name] = tuple(value)
        else:
            values[name] = value
    return cls(**values)


def _is_tuple(kind: Any) -> bool:
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        return any(_is_tuple(arg) for arg in typing.get_args(kind))
    return origin is tuple or kind is tuple
