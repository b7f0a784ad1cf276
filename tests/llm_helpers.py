"""Shared builders for the predictor tests: tiny random Llama backbones (offline, milliseconds)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch", reason="the predictor tests need the llm extra: pip install -e '.[llm]'")

from models.backbone import load_backbone  # noqa: E402
from models.predictor import Predictor  # noqa: E402
from models.settings import BackboneConfig, TinyLlamaConfig  # noqa: E402

TINY = TinyLlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2)


def tiny_backbone(seed: int = 0, **kw):
    return load_backbone(BackboneConfig(source="tiny", seed=seed, tiny=TINY, **kw))


def randomise_adapters(predictor: Predictor, seed: int = 0, scale: float = 0.3) -> None:
    """Give every LoRA B matrix and head weight random values (fresh LoRA has B = 0, which would
    make both adapters identical to the bare backbone and hide adapter mix-ups)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in predictor.model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * scale)
        for head in predictor.heads.values():
            for param in head.parameters():
                param.copy_(torch.randn(param.shape, generator=generator) * scale)
    for task in list(predictor.heads):
        predictor.changed(task)


def tiny_predictor(seed: int = 0, tasks=("regressor", "sentiment"), randomise: bool = True) -> Predictor:
    predictor = Predictor(tiny_backbone(seed))
    for k, task in enumerate(tasks):
        predictor.add_task(task, seed=seed + k)
    if randomise:
        randomise_adapters(predictor, seed)
    return predictor
