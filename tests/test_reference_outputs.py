"""Reference outputs of a fixed tiny Llama (seeded weights, fixed inputs), kept in a JSON file.

A torch / transformers / peft upgrade that changes initialisation or numerics shows up here first.
If the change is expected, rewrite the file with ``UPDATE_REFERENCE_OUTPUTS=1 pytest
tests/test_reference_outputs.py`` and say in the commit which library moved.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from models.prompts import headline_text, regression_text
from tests.llm_helpers import tiny_predictor, torch

REFERENCE = Path(__file__).parent / "data" / "tiny_llama_reference.json"


def _stats(tensor) -> dict:
    t = tensor.detach().double().flatten()
    return {"sum": t.sum().item(), "abs_mean": t.abs().mean().item(), "std": t.std().item(),
            "first": [round(x, 7) for x in t[:6].tolist()]}


def compute_reference() -> dict:
    predictor = tiny_predictor(seed=0)
    backbone = predictor.backbone
    ids = torch.tensor([list(range(3, 40))])
    with torch.no_grad(), predictor.model.disable_adapter():
        out = backbone.model(input_ids=ids, output_hidden_states=True)
    probs = predictor.predict_sentiment([headline_text("Shares jump after record quarter")])
    mean, std = predictor.predict_regression([regression_text("BTC/USDT", "1h", [0.12, -1.3, *[0.5] * 14])])
    return {
        "versions": {"torch": torch.__version__, **_versions()},
        "backbone_fingerprint": backbone.fingerprint,
        "logits": _stats(out.logits),
        "last_hidden": _stats(out.hidden_states[-1]),
        "sentiment_probabilities": [round(x, 7) for x in probs[0].tolist()],
        "regression_mean_std": [round(float(mean[0]), 7), round(float(std[0]), 7)],
    }


def _versions() -> dict:
    import peft
    import transformers

    return {"transformers": transformers.__version__, "peft": peft.__version__}


def test_tiny_llama_outputs_match_the_kept_reference():
    current = compute_reference()
    if os.environ.get("UPDATE_REFERENCE_OUTPUTS") == "1":
        REFERENCE.parent.mkdir(exist_ok=True)
        REFERENCE.write_text(json.dumps(current, indent=1) + "\n")
    assert REFERENCE.is_file(), f"{REFERENCE} is missing; create it with UPDATE_REFERENCE_OUTPUTS=1"
    kept = json.loads(REFERENCE.read_text())
    moved = f"(kept with {kept['versions']}, now {current['versions']}; see this file's docstring)"
    assert current["backbone_fingerprint"] == kept["backbone_fingerprint"]
    for key in ("logits", "last_hidden"):
        for stat in ("sum", "abs_mean", "std"):
            assert current[key][stat] == pytest.approx(kept[key][stat], rel=1e-4, abs=1e-5), f"{key}.{stat} {moved}"
        assert current[key]["first"] == pytest.approx(kept[key]["first"], abs=1e-5), f"{key}.first {moved}"
    assert current["sentiment_probabilities"] == pytest.approx(kept["sentiment_probabilities"], abs=1e-5), moved
    assert current["regression_mean_std"] == pytest.approx(kept["regression_mean_std"], abs=1e-5), moved
