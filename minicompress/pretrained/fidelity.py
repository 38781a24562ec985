"""How far a compressed encoder's sentence embeddings are from the fp32 model's.

Four numbers, each one function, each comparing ``emb`` (the compressed model's
embeddings, [N, C]) with ``ref`` (the fp32 model's, [N, C], the same N sentences):

- ``row_cosines``: cos(ref_i, emb_i) per sentence; its mean and its minimum (the worst
  sentence) are the first two figures;
- ``similarity_spearman``: do the two models rank sentence *pairs* the same way? Spearman's
  rank correlation between the N (N - 1) / 2 pairwise cosine similarities of each model;
- ``top_k_overlap``: would a search engine return the same neighbours? For each sentence,
  the fraction of its k nearest neighbours (by cosine, itself excluded) under ``ref`` that
  are also among its k nearest under ``emb``, averaged over the sentences.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import spearmanr


def _check_pair(ref: np.ndarray, emb: np.ndarray, min_rows: int = 1) -> None:
    ref, emb = np.asarray(ref), np.asarray(emb)
    if ref.ndim != 2 or ref.shape != emb.shape:
        raise ValueError(
            f"ref and emb must be 2-D arrays [N, C] of the same shape; got {ref.shape} and "
            f"{emb.shape}"
        )
    if ref.shape[0] < min_rows:
        raise ValueError(f"need at least {min_rows} rows (sentences); got {ref.shape[0]}")
    if not (np.isfinite(ref).all() and np.isfinite(emb).all()):
        raise ValueError("ref and emb must hold finite numbers only")


def unit_rows(x: np.ndarray) -> np.ndarray:
    """x_i / ||x_i|| in float64 (a zero row is refused: its direction is undefined)."""
    x = np.asarray(x, dtype=np.float64)
    norm = np.linalg.norm(x, axis=1, keepdims=True)  # [N, 1]
    if np.any(norm == 0):
        raise ValueError(f"rows {np.flatnonzero(norm[:, 0] == 0).tolist()[:5]} are all zeros")
    return x / norm


def row_cosines(ref: np.ndarray, emb: np.ndarray) -> np.ndarray:
    """cos_i = <ref_i, emb_i> / (||ref_i|| ||emb_i||).   [N, C], [N, C]  ->  float64 [N]."""
    _check_pair(ref, emb)
    return np.sum(unit_rows(ref) * unit_rows(emb), axis=1)


def similarity_matrix(x: np.ndarray) -> np.ndarray:
    """S_ij = cos(x_i, x_j).   [N, C]  ->  float64 [N, N]."""
    u = unit_rows(x)
    return u @ u.T


def similarity_spearman(ref: np.ndarray, emb: np.ndarray) -> float:
    """Spearman's rho between {S_ref[i, j]} and {S_emb[i, j]} over the pairs i < j
    (``scipy.stats.spearmanr``: Pearson correlation of the ranks, ties given their mean
    rank). Needs N >= 3 sentences (at least 3 pairs). 1.0: same order of all pairs."""
    _check_pair(ref, emb, min_rows=3)
    i, j = np.triu_indices(ref.shape[0], k=1)
    rho = spearmanr(similarity_matrix(ref)[i, j], similarity_matrix(emb)[i, j]).statistic
    return float(rho)


def nearest_neighbours(x: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k most similar other rows of each row, most similar first (ties:
    lower index first).   [N, C]  ->  int64 [N, k]."""
    s = similarity_matrix(x)
    np.fill_diagonal(s, -np.inf)  # a sentence is not its own neighbour
    return np.argsort(-s, axis=1, kind="stable")[:, :k]


def top_k_overlap(ref: np.ndarray, emb: np.ndarray, k: int = 5) -> float:
    """mean_i |NN_k(ref, i) & NN_k(emb, i)| / k  (1.0: the same k neighbours for everyone).

    Needs N >= k + 1 sentences."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be an integer >= 1; got {k!r}")
    _check_pair(ref, emb, min_rows=k + 1)
    a, b = nearest_neighbours(ref, k), nearest_neighbours(emb, k)  # [N, k] each
    shared = [len(set(ra) & set(rb)) for ra, rb in zip(a.tolist(), b.tolist(), strict=True)]
    return float(np.mean(shared) / k)


def fidelity_report(ref: np.ndarray, emb: np.ndarray, k: int = 5) -> dict[str, float]:
    """{"mean_cosine", "min_cosine", "spearman", "top5_overlap"} (``top{k}_overlap``)."""
    cos = row_cosines(ref, emb)
    return {
        "mean_cosine": float(cos.mean()),
        "min_cosine": float(cos.min()),
        "spearman": similarity_spearman(ref, emb),
        f"top{k}_overlap": top_k_overlap(ref, emb, k),
    }
