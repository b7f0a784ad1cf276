"""The backbone loader: sources, precision checks, freezing, fingerprints (tiny random Llamas)."""

from __future__ import annotations

import pytest

from models.backbone import bf16_fidelity, check_precision, cpu_has_native_bf16, load_backbone
from models.settings import BackboneConfig, BackboneError
from tests.llm_helpers import TINY, tiny_backbone, torch


def test_tiny_backbone_is_frozen_in_eval_mode_and_pads_explicitly():
    backbone = tiny_backbone()
    assert not any(p.requires_grad for p in backbone.model.parameters())
    assert not backbone.model.training
    tok = backbone.tokenizer
    assert tok.pad_token_id is not None and tok.padding_side == "right"
    assert backbone.hidden_size == TINY.hidden_size
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_fingerprint_is_stable_and_tracks_seed_and_precision():
    assert tiny_backbone(0).fingerprint == tiny_backbone(0).fingerprint
    assert tiny_backbone(0).fingerprint != tiny_backbone(1).fingerprint
    emulated = tiny_backbone(0, precision="bf16", allow_emulated_bf16=True)
    assert emulated.fingerprint != tiny_backbone(0).fingerprint
    assert emulated.dtype == torch.bfloat16


def test_same_seed_same_weights_and_the_global_rng_is_untouched():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    a = tiny_backbone(5)
    after = torch.rand(3)
    b = tiny_backbone(5)
    assert torch.equal(expected, after)
    for (_, pa), (_, pb) in zip(a.model.named_parameters(), b.model.named_parameters()):
        assert torch.equal(pa, pb)


def test_local_folder_round_trip_and_random_init_baseline(tmp_path):
    tiny = tiny_backbone(3)
    tiny.model.save_pretrained(tmp_path)
    tiny.tokenizer.save_pretrained(tmp_path)
    loaded = load_backbone(BackboneConfig(source=str(tmp_path)))
    ids = tiny.tokenizer(["some text"], return_tensors="pt")
    with torch.no_grad():
        expected = tiny.model(**ids).logits
        assert torch.equal(loaded.model(**ids).logits, expected)
        randomised = load_backbone(BackboneConfig(source=str(tmp_path), random_init=True, seed=9))
        assert not torch.allclose(randomised.model(**ids).logits, expected)
    assert randomised.fingerprint != loaded.fingerprint
    assert not any(p.requires_grad for p in randomised.model.parameters())


def test_loading_a_saved_model_draws_no_third_party_progress_bar(tmp_path, capfd):
    from transformers.utils import logging as hf_logging

    tiny = tiny_backbone(3)
    tiny.model.save_pretrained(tmp_path)
    tiny.tokenizer.save_pretrained(tmp_path)
    capfd.readouterr()
    assert hf_logging.is_progress_bar_enabled()  # transformers would draw "Loading weights" here
    load_backbone(BackboneConfig(source=str(tmp_path)))
    load_backbone(BackboneConfig(source=str(tmp_path), random_init=True))
    err = capfd.readouterr().err
    assert "Loading weights" not in err and "it/s]" not in err, err
    assert hf_logging.is_progress_bar_enabled()  # switched off only while loading


def test_the_gguf_de_quantising_bar_is_off_while_converting(capfd):
    from transformers import modeling_gguf_pytorch_utils as gguf_utils

    from models.backbone import _no_gguf_bar

    capfd.readouterr()
    with _no_gguf_bar():  # what convert_gguf loads under; the real conversion is in test_smollm2 (slow)
        list(gguf_utils.tqdm(range(3), desc="de-quantising"))
    assert "de-quantising" not in capfd.readouterr().err
    list(gguf_utils.tqdm(range(3), desc="after"))
    assert "after" in capfd.readouterr().err  # the module's own bar is back as it was


@pytest.mark.parametrize(("source", "message"), [
    ("missing/model.gguf", "GGUF file not found"),
    ("./no/such/folder", "neither a folder with config.json nor a .gguf"),
])
def test_bad_local_sources_fail_clearly(source, message):
    with pytest.raises(BackboneError, match=message):
        load_backbone(BackboneConfig(source=source))


def test_folder_without_config_fails_clearly(tmp_path):
    with pytest.raises(BackboneError, match="no config.json"):
        load_backbone(BackboneConfig(source=str(tmp_path)))


def test_uncached_hub_id_offline_names_the_fix(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(BackboneError, match="not in the local Hugging Face cache"):
        load_backbone(BackboneConfig(source="nobody/not-a-model-xyz"))


def test_unknown_precision_and_settings_are_rejected():
    with pytest.raises(BackboneError, match="precision must be one of"):
        BackboneConfig(precision="fp8")
    with pytest.raises(BackboneError, match="unknown backbone setting"):
        BackboneConfig.from_dict({"sorce": "tiny"})
    config = BackboneConfig(source="tiny", precision="fp32", seed=4)
    assert BackboneConfig.from_dict(config.to_dict()) == config


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on machines without CUDA")
@pytest.mark.parametrize("precision", ["nf4", "int8"])
def test_quantisation_without_cuda_fails_before_loading(precision):
    with pytest.raises(BackboneError, match="CUDA GPU"):
        check_precision(BackboneConfig(source="tiny", precision=precision))


@pytest.mark.skipif(torch.cuda.is_available() or cpu_has_native_bf16(), reason="this machine runs bf16 natively")
def test_bf16_on_a_cpu_without_native_support_is_refused_unless_allowed():
    with pytest.raises(BackboneError, match="no native bf16"):
        tiny_backbone(precision="bf16")
    assert tiny_backbone(precision="bf16", allow_emulated_bf16=True).dtype == torch.bfloat16


def test_bf16_fidelity_is_close_to_fp32():
    fidelity = bf16_fidelity(tiny_backbone(), ["The market rose 2% today.", "Shares fell after the report."])
    assert fidelity.min_cosine > 0.99
    assert fidelity.max_abs_diff < 0.1 * max(1.0, fidelity.scale * 10)


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["nf4", "int8"])
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (bitsandbytes quantisation)")
def test_qlora_backbone_loads_quantised_on_gpu(tmp_path, precision):
    tiny = tiny_backbone(2)
    tiny.model.save_pretrained(tmp_path)
    tiny.tokenizer.save_pretrained(tmp_path)
    backbone = load_backbone(BackboneConfig(source=str(tmp_path), precision=precision))
    linear_types = {type(m).__name__ for m in backbone.model.modules()}
    assert ("Linear4bit" if precision == "nf4" else "Linear8bitLt") in linear_types
    from models.predictor import Predictor

    predictor = Predictor(backbone)
    predictor.add_task("sentiment")
    out = predictor.predict_sentiment(["Headline: shares jump"])
    assert out.shape == (1, 3)
