"""Data that must never be destroyed by mistake: ``train --out`` and the GGUF conversion refuse a
folder that is not theirs and swap a replacement in by rename, scratch folders a killed run left are
cleaned up, and the converted backbone is reused only for the same bytes (issue 16)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from models.training.checkpoint import CheckpointError, read_checkpoint, write_checkpoint

ROOT = Path(__file__).resolve().parents[1]


class FakePredictor:
    """What ``write_checkpoint`` needs of a predictor, without a model."""

    backbone = SimpleNamespace(fingerprint="backbone-0")

    def __init__(self, marker: str = "new", fail: bool = False) -> None:
        self.marker, self.fail = marker, fail

    def fingerprint(self, task: str) -> str:
        return f"predictor-{self.marker}"

    def save_task(self, task: str, folder: Path) -> None:
        folder.mkdir(parents=True)
        (folder / "head.json").write_text(json.dumps({"marker": self.marker}))
        if self.fail:
            raise RuntimeError("disk full")


def write(folder: Path, marker: str = "new", fail: bool = False) -> Path:
    return write_checkpoint(folder, FakePredictor(marker, fail), "sentiment", {"config": {}}, {"size": 1},
                            {"marker": marker})


def marker_of(folder: Path) -> str:
    return read_checkpoint(folder, "sentiment").metrics["marker"]


# ---------------------------------------------------------------- train --out


def test_train_out_refuses_a_folder_that_is_neither_empty_nor_a_checkpoint(tmp_path):
    folder = tmp_path / "thesis"
    folder.mkdir()
    (folder / "chapter1.tex").write_text("years of work")
    with pytest.raises(CheckpointError, match=r"thesis is not empty and does not hold a checkpoint; refusing"):
        write(folder)
    assert (folder / "chapter1.tex").read_text() == "years of work"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["thesis"]  # no scratch left either


def test_train_out_refuses_a_file(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("keep me")
    with pytest.raises(CheckpointError, match="is a file, not a checkpoint folder"):
        write(path)
    assert path.read_text() == "keep me"


def test_train_out_writes_into_an_empty_folder_and_replaces_a_checkpoint(tmp_path):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    write(folder, "first")
    assert marker_of(folder) == "first"
    write(folder, "second")
    assert marker_of(folder) == "second"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_the_trainers_refuse_a_foreign_out_folder_before_training(tmp_path):
    from models.training.sentiment_trainer import SentimentTrainer

    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "cat.jpg").write_bytes(b"\xff\xd8")
    trainer = SentimentTrainer.__new__(SentimentTrainer)  # no config: it must fail before using one
    with pytest.raises(CheckpointError, match="photos is not empty"):
        trainer.train(None, folder)  # type: ignore[arg-type]
    assert (folder / "cat.jpg").exists()


def test_a_crash_while_swapping_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    folder = tmp_path / "ckpt"
    write(folder, "old")
    real_rename = os.rename
    failed = []

    def rename(src, dst):
        # the moment the new checkpoint would take the target's name: fail once, as a crash would
        if Path(dst) == folder and Path(src).name.startswith(".") and not failed:
            failed.append(src)
            raise OSError("simulated crash")
        return real_rename(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(OSError, match="simulated crash"):
        write(folder, "new")
    assert failed
    assert marker_of(folder) == "old"  # whole and readable, not deleted before the new one was in place
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_a_failed_write_leaves_the_old_checkpoint_and_no_scratch(tmp_path):
    folder = tmp_path / "ckpt"
    write(folder, "old")
    with pytest.raises(RuntimeError, match="disk full"):
        write(folder, "new", fail=True)
    assert marker_of(folder) == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


_KILLED_WRITER = """
import json, sys, time
from pathlib import Path
from types import SimpleNamespace
from models.training.checkpoint import write_checkpoint

class Slow:
    backbone = SimpleNamespace(fingerprint="b")
    def fingerprint(self, task):
        return "p"
    def save_task(self, task, folder):
        folder.mkdir(parents=True)
        (folder / "half.bin").write_bytes(b"x" * 100)
        Path(sys.argv[2]).write_text("started")
        time.sleep(600)

write_checkpoint(sys.argv[1], Slow(), "sentiment", {}, {}, {})
"""


def test_scratch_folders_of_a_killed_training_run_are_removed_by_the_next_write(tmp_path):
    folder, started = tmp_path / "out" / "ckpt", tmp_path / "started"
    child = subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, str(folder), str(started)], cwd=ROOT)
    try:
        deadline = time.monotonic() + 60
        while not started.exists():
            assert child.poll() is None, "the writer died before it started writing"
            assert time.monotonic() < deadline, "the writer did not start"
            time.sleep(0.05)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait()
    assert [p.name for p in (tmp_path / "out").iterdir()] != []  # the killed run's scratch is there
    write(folder, "after")
    assert marker_of(folder) == "after"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["ckpt"]


def test_a_swap_cut_between_its_renames_is_undone(tmp_path):
    from models import folders

    folder = tmp_path / "ckpt"
    write(folder, "old")
    dead = _dead_pid()
    os.rename(folder, tmp_path / f".ckpt.{dead}.old")  # the first rename happened, then the process died
    folders.tidy(folder)
    assert marker_of(folder) == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


# ---------------------------------------------------------------- the GGUF conversion


@pytest.fixture
def fake_conversion(monkeypatch):
    """``convert_gguf`` with the transformers part replaced: records each conversion."""
    pytest.importorskip("torch", reason="models.backbone needs the llm extra")
    import models.backbone as backbone

    made: list[Path] = []

    def convert_into(gguf_path: Path, folder: Path) -> None:
        made.append(gguf_path)
        (folder / "config.json").write_text(json.dumps({"from": gguf_path.read_bytes().hex()}))

    monkeypatch.setattr(backbone, "_convert_into", convert_into, raising=False)
    return backbone, made


def test_convert_gguf_refuses_a_target_that_is_not_a_conversion(tmp_path, fake_conversion):
    backbone, made = fake_conversion
    gguf = tmp_path / "Documents.gguf"
    gguf.write_bytes(b"GGUF" + b"\0" * 12)
    home = tmp_path / "home"
    (home / "Documents").mkdir(parents=True)
    (home / "Documents" / "taxes.pdf").write_bytes(b"%PDF")
    with pytest.raises(backbone.BackboneError, match=r"Documents is not empty and does not hold a converted backbone"):
        backbone.convert_gguf(gguf, home)
    assert (home / "Documents" / "taxes.pdf").read_bytes() == b"%PDF"
    assert made == []


def test_a_converted_gguf_is_reused_only_for_the_same_bytes(tmp_path, fake_conversion):
    backbone, made = fake_conversion
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF-one")
    target = backbone.convert_gguf(gguf, tmp_path / "cache")
    assert backbone.convert_gguf(gguf, tmp_path / "cache") == target and len(made) == 1  # reused
    gguf.write_bytes(b"GGUF-two")  # the same size, other weights
    backbone.convert_gguf(gguf, tmp_path / "cache")
    assert len(made) == 2
    assert json.loads((target / "config.json").read_text())["from"] == b"GGUF-two".hex()
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["model"]


def test_a_conversion_marked_by_size_alone_is_converted_again(tmp_path, fake_conversion):
    backbone, made = fake_conversion
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF-new")
    old = tmp_path / "cache" / "model"
    old.mkdir(parents=True)
    (old / "converted_from.json").write_text(json.dumps({"file": "model.gguf", "size": gguf.stat().st_size,
                                                         "mtime_ns": 0}))
    (old / "config.json").write_text(json.dumps({"from": "something else"}))
    backbone.convert_gguf(gguf, tmp_path / "cache")
    assert len(made) == 1
    assert json.loads((old / "config.json").read_text())["from"] == b"GGUF-new".hex()
    mark = json.loads((old / "converted_from.json").read_text())
    assert len(mark["sha256"]) == 64 and mark["settings"]["dtype"] == "float32"


# ---------------------------------------------------------------- reports and the evaluation


def _hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") or p.name.endswith(".tmp"))


def test_the_report_writer_syncs_each_file_before_renaming_it(tmp_path, monkeypatch):
    from engine.report import html

    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append(f"replace {Path(b).name}"), real_replace(a, b))[1])
    html._write(tmp_path / "r", "title", "<p>body</p>", {"equity": b"\x89PNG"}, "")
    for name in ("equity.png", "report.html"):
        at = events.index(f"replace {name}")
        assert "fsync" in events[:at], f"{name} renamed into place before its bytes were on disk: {events}"
    assert _hidden(tmp_path / "r") == []


def test_a_failed_report_write_keeps_no_temporary_file(tmp_path, monkeypatch):
    from engine.report import html

    out = tmp_path / "r"
    out.mkdir()
    (out / "report.html").write_text("the previous report")

    def replace(a, b):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError, match="disk full"):
        html._write(out, "title", "<p>body</p>", {}, "")
    assert _hidden(out) == []
    assert (out / "report.html").read_text() == "the previous report"


def test_a_chart_that_fails_to_draw_leaves_the_previous_png(tmp_path):
    from engine.report import charts

    path = tmp_path / "equity.png"
    path.write_bytes(b"previous chart")

    class Broken:
        def savefig(self, target, **kw):
            if hasattr(target, "write"):
                target.write(b"half a ch")
            else:
                Path(target).write_bytes(b"half a ch")
            raise RuntimeError("font missing")

    with pytest.raises(RuntimeError, match="font missing"):
        charts.save(Broken(), path)  # type: ignore[arg-type]
    assert path.read_bytes() == b"previous chart"
    assert _hidden(tmp_path) == []


def test_the_evaluation_never_shares_a_fixed_temporary_name(tmp_path):
    from research import evaluation

    path = tmp_path / "EVALUATION.md"
    other = tmp_path / "EVALUATION.md.tmp"  # another evaluation's file in flight, or a user's
    other.write_text("someone else's")
    evaluation._atomic(path, "# mine\n")
    assert path.read_text() == "# mine\n"
    assert other.read_text() == "someone else's"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["EVALUATION.md", "EVALUATION.md.tmp"]


def test_a_failed_evaluation_write_keeps_no_temporary_file(tmp_path, monkeypatch):
    from research import evaluation

    def replace(a, b):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(Path, "replace", lambda self, target: replace(self, target))
    with pytest.raises(OSError, match="disk full"):
        evaluation._atomic(tmp_path / "EVALUATION.md", "# mine\n")
    assert list(tmp_path.iterdir()) == []
