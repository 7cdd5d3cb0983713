"""Cached wrappers and the heatmap helper for the Embeddings and positions page (math: core/inspect/embeddings.py)."""

from __future__ import annotations

import numpy as np
import streamlit as st

from core.inspect import embeddings as emb
from core.models.loading import LoadedModel
from ui.charts import heatmap_image


@st.cache_resource(show_spinner="Measuring every embedding row…", max_entries=4)
def _row_norms(key: str, _lm: LoadedModel):
    return emb.row_norms(_lm)


def row_norm(lm: LoadedModel, token_id: int) -> float:
    """The L2 norm of one embedding row (all rows are measured once per model and cached)."""
    return float(_row_norms(lm.spec.key, lm)[token_id])


@st.cache_data(show_spinner=False, max_entries=256)
def _neighbours(key: str, token_id: int, k: int, _lm: LoadedModel) -> list[dict]:
    return emb.nearest_neighbours(_lm, token_id, k, _row_norms(key, _lm))


def neighbours(lm: LoadedModel, token_id: int, k: int) -> list[dict]:
    """The k nearest rows of W_E by cosine similarity (the token itself first)."""
    return _neighbours(lm.spec.key, token_id, k, lm)


def vector(lm: LoadedModel, token_id: int) -> np.ndarray:
    return emb.token_vector(lm, token_id).numpy()


def pca(lm: LoadedModel, token_ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """(coords [n, 2], explained variance ratio [2]) of these tokens' vectors."""
    return emb.pca_2d(emb.token_vectors(lm, token_ids))


def cosines(lm: LoadedModel, token_ids: list[int]) -> np.ndarray:
    """[n, n] cosine similarity between these tokens' vectors."""
    return emb.cosine_matrix(emb.token_vectors(lm, token_ids)).numpy()


@st.cache_resource(show_spinner=False, max_entries=4)
def _rope(key: str, _lm: LoadedModel) -> emb.RopeSummary:
    return emb.rope_summary(_lm)


def rope(lm: LoadedModel) -> emb.RopeSummary:
    """The model's RoPE frequencies, relative score and cos table, checked against its rotary_emb."""
    return _rope(lm.spec.key, lm)


def rotation(summary: emb.RopeSummary, pair: int, n_positions: int) -> tuple[np.ndarray, np.ndarray]:
    """(angles [n], the point (1, 0) rotated by each angle [n, 2]) for one frequency pair."""
    angles = emb.rope_angles(summary.inv_freq, n_positions)[:, pair]
    return angles.numpy(), emb.rotate_pair((1.0, 0.0), angles).numpy()


@st.cache_data(show_spinner=False, max_entries=16)
def sinusoidal(n_positions: int, d_model: int) -> np.ndarray:
    """[n_positions, d_model] the original Transformer's position encoding."""
    return emb.sinusoidal_encoding(n_positions, d_model).numpy()


@st.cache_data(show_spinner=False, max_entries=16)
def _learned(key: str, n_positions: int, _lm: LoadedModel) -> np.ndarray:
    return emb.learned_position_similarity(_lm, n_positions).numpy()


def learned_similarity(lm: LoadedModel, n_positions: int) -> np.ndarray:
    """[n, n] cosine similarity between the learned position vectors 0 … n-1."""
    return _learned(lm.spec.key, n_positions, lm)


def heatmap(matrix: np.ndarray, caption: str, width: int = 640, height: int = 320, **kwargs) -> None:
    """A server-rendered heatmap, each cell repeated to roughly `width` x `height` pixels (blocky, not blurred)."""
    rows, cols = matrix.shape
    big = np.repeat(np.repeat(matrix, max(1, height // rows), axis=0), max(1, width // cols), axis=1)
    img = heatmap_image(big, **kwargs)
    st.image(img, caption=caption, width=img.width)
