"""The page list, in sections. A page appears only once its file exists (pages not built yet stay hidden)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class PageInfo:
    path: str  # relative to the project root
    title: str
    icon: str
    section: str
    blurb: str

    @property
    def url_path(self) -> str:
        """'pages/3_Forward_pass.py' -> 'Forward_pass' (what st.Page infers, made explicit)."""
        return Path(self.path).stem.split("_", 1)[1]


PAGES: tuple[PageInfo, ...] = (
    PageInfo("pages/1_Architecture.py", "Architecture", "🏗️", "Inside the model",
             "The block diagram generated from the real module tree; compare two architectures."),
    PageInfo("pages/2_Parameters.py", "Parameter statistics", "🔢", "Inside the model",
             "Where the parameters are, per component and layer; weight statistics; memory per dtype."),
    PageInfo("pages/3_Forward_pass.py", "Forward pass, step by step", "➡️", "Inside the model",
             "Text to next-token probabilities with the real tensors, computed by hand and checked."),
    PageInfo("pages/4_Tokens.py", "Tokens", "🔤", "Inside the model",
             "Byte-pair encoding from scratch, step by step, beside the model's own tokenizer."),
    PageInfo("pages/4b_Embeddings_and_positions.py", "Embeddings and positions", "🧭", "Inside the model",
             "Token vectors and their neighbours; sinusoidal, learned and rotary positions."),
    PageInfo("pages/5_Attention.py", "Attention", "👀", "Attention & weights",
             "Every head's attention on your text, head statistics, rollout."),
    PageInfo("pages/6_Weights.py", "Weights", "⚖️", "Attention & weights",
             "Statistics, histograms and spectra of every weight matrix, across all layers."),
    PageInfo("pages/7_Logit_lens.py", "Logit lens", "🔭", "Attention & weights",
             "What the model would predict if it stopped after each layer."),
    PageInfo("pages/19_Attention_by_hand.py", "Attention by hand", "✍️", "Attention & weights",
             "Compute a score, a softmax and a weighted sum yourself, then with the model's real Q, K, V."),
    PageInfo("pages/20_Logit_attribution.py", "Logit attribution", "🧮", "Circuits",
             "Which heads and MLPs wrote one prediction's logit: direct logit attribution, checked to add up."),
    PageInfo("pages/21_Ablation_and_patching.py", "Ablation and patching", "✂️", "Circuits",
             "Switch heads and MLPs off; patch clean activations into a corrupted run, batched."),
    PageInfo("pages/22_Contribution_graph.py", "Contribution graph", "🕸️", "Circuits",
             "The routes that carried one prediction through layers and positions (information flow routes)."),
    PageInfo("pages/23_Head_roles.py", "Head roles", "🧩", "Circuits",
             "Induction, previous-token and duplicate-token heads, scored on every head."),
    PageInfo("pages/24_Encoder_attention.py", "Encoder attention", "🔀", "Circuits",
             "BERT and T5 style models: bidirectional self-attention, decoder self-attention, cross-attention."),
    PageInfo("pages/10_Pretraining.py", "Pre-training", "🏋️", "Training",
             "Train a small GPT live on Tiny Shakespeare; training lessons side by side."),
    PageInfo("pages/11_Fine_tuning.py", "Fine-tuning", "🎯", "Training",
             "Supervised fine-tuning of a real model: full, frozen layers or LoRA."),
    PageInfo("pages/12_RLHF.py", "RLHF and preference tuning", "🤝", "Alignment & decoding",
             "SFT, reward model, PPO, DPO and GRPO, each step a real mini-run."),
    PageInfo("pages/13_Decoding.py", "Decoding comparator", "🎲", "Alignment & decoding",
             "Greedy, beam, temperature, top-k, top-p, min-p side by side, step by step."),
    PageInfo("pages/14_KV_cache.py", "KV cache", "🗄️", "Alignment & decoding",
             "Prefill vs decode measured live; the cache's size by formula and in memory."),
    PageInfo("pages/15_GPUs.py", "GPUs and planner", "🖥️", "Hardware & evaluation",
             "Accelerators across generations, this machine measured, memory and speed for any model."),
    PageInfo("pages/16_Quantization.py", "Quantization lab", "🗜️", "Hardware & evaluation",
             "fp32, bf16, 8-bit and 4-bit: memory, speed and quality measured on the same model."),
    PageInfo("pages/17_Scaling_laws.py", "Scaling laws", "📈", "Hardware & evaluation",
             "Kaplan and Chinchilla: compute-optimal size and data for a budget, known models placed."),
    PageInfo("pages/18_Evaluation.py", "Evaluation", "🧪", "Hardware & evaluation",
             "Perplexity with a sliding window, KL between models, multiple-choice scoring."),
)


def available_pages() -> list[PageInfo]:
    return [p for p in PAGES if (ROOT / p.path).is_file()]


def ensure_app_navigation() -> None:
    """Route a deep link through Home.py's st.navigation.

    Streamlit decides per process, before any script has run, that an app with a `pages/` folder uses the
    legacy pages mode; until Home.py has called st.navigation once, a page opened by its URL runs alone
    (no sections, no wide layout). Switching the flag off and rerunning runs Home.py, which resolves the
    same page from the URL. The flag is internal to Streamlit, hence the guard.
    """
    import streamlit as st

    try:
        from streamlit.runtime.pages_manager import PagesManager
    except ImportError:  # pragma: no cover - a future Streamlit without it
        return
    if PagesManager.uses_pages_directory:
        PagesManager.uses_pages_directory = False
        st.rerun()
