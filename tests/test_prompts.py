"""Prompts: a shared prefix through the chat template, suffixes that always follow it."""

from __future__ import annotations

import pytest

from models.prompts import (
    REGRESSION_TEMPLATE,
    SENTIMENT_TEMPLATE,
    PromptEncoder,
    PromptTemplate,
    headline_text,
    regression_text,
)
from tests.llm_helpers import tiny_backbone


def test_prefix_is_the_chat_template_up_to_the_sample_and_shared():
    tok = tiny_backbone().tokenizer
    encoder = PromptEncoder(tok, REGRESSION_TEMPLATE)
    sample = regression_text("BTC/USDT", "1h", [0.123, -1.3, -0.001, *range(13)])
    assert sample == "Asset: BTC/USDT, 1h bars.\nFeatures: 0.12 -1.30 0.00 " + " ".join(f"{k}.00" for k in range(13))
    full = encoder.full_text(sample)
    assert full == tok.apply_chat_template(
        [{"role": "system", "content": REGRESSION_TEMPLATE.system},
         {"role": "user", "content": f"{REGRESSION_TEMPLATE.instruction}\n{sample}"}],
        tokenize=False, add_generation_prompt=True)
    assert encoder.prefix.endswith(REGRESSION_TEMPLATE.instruction + "\n")
    assert "in this order: ret1, ret5, ret20, vol_ratio" in encoder.prefix  # names live in the shared prefix
    assert encoder.closing == "<|im_end|>\n<|im_start|>assistant\n"
    # prefix ids + suffix ids are exactly the ids of the whole prompt text
    assert encoder.full_ids([sample])[0] == tok(full, add_special_tokens=False)["input_ids"]


def test_long_samples_are_cut_but_keep_the_closing_tags():
    tok = tiny_backbone().tokenizer
    template = PromptTemplate("sys", "Classify.", max_sample_tokens=10)
    encoder = PromptEncoder(tok, template)
    (ids,) = encoder.encode([headline_text("x" * 500)])
    assert len(ids) == 10 + len(encoder.closing_ids)
    assert ids[-len(encoder.closing_ids):] == encoder.closing_ids


def test_regression_text_needs_all_sixteen_values():
    with pytest.raises(ValueError, match="3 feature values, expected 16"):
        regression_text("X", "1d", [1.0, 2.0, 3.0])


def test_headline_text_collapses_whitespace():
    assert headline_text("  Shares\n jump\t10% ") == "Headline: Shares jump 10%"
    assert SENTIMENT_TEMPLATE.system and "bearish, neutral or bullish" in SENTIMENT_TEMPLATE.instruction
