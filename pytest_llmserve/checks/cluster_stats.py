"""Statistics for items that come in clusters (tokens of one prompt, positions of one passage).

Items of one cluster are correlated (a prompt that drifts drifts everywhere; a passage the FP8
model finds hard flips many positions), so treating N items as independent makes intervals too
narrow. Here the *cluster* is the resampling unit: a bootstrap draws clusters with replacement
(multinomial weights, so one matrix product per statistic) and a ratio estimator
sum(values) / sum(counts) is recomputed per resample. The effective n is N divided by the design
effect, the variance of the clustered mean over the variance an independent sample would have.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from numpy.typing import ArrayLike

from .stats import SeedLike, rng_from

DEFAULT_RESAMPLES = 4000


def cluster_weights(n_clusters: int, n_resamples: int, seed: SeedLike) -> np.ndarray:
    """(n_resamples, n_clusters) bootstrap weights: how often each cluster is drawn in each resample."""
    if n_clusters < 1:
        raise ValueError("a cluster bootstrap needs at least one cluster")
    rng = rng_from(seed)
    return rng.multinomial(n_clusters, np.full(n_clusters, 1.0 / n_clusters), size=n_resamples).astype(float)


def ratio_replicates(weights: np.ndarray, totals: ArrayLike, counts: ArrayLike) -> np.ndarray:
    """sum(w·totals) / sum(w·counts) per resample (0 where a resample has no counts)."""
    num = weights @ np.asarray(totals, dtype=float)
    den = weights @ np.asarray(counts, dtype=float)
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def ratio(totals: ArrayLike, counts: ArrayLike) -> float:
    """The pooled ratio sum(totals) / sum(counts) (0 when there are no counts)."""
    den = float(np.sum(counts))
    return float(np.sum(totals)) / den if den > 0 else 0.0


@dataclass(frozen=True, slots=True)
class ClusterSummary:
    """Items, clusters, and how many independent items the clustered sample is worth."""

    n_items: int
    n_clusters: int
    design_effect: float
    effective_n: float


def cluster_summary(values: ArrayLike, groups: Sequence[object] | np.ndarray) -> ClusterSummary:
    """Design effect of the mean of `values` grouped by `groups` (ratio-estimator linearisation).

    var_clustered = G/(G-1) · Σ_g (t_g − m·n_g)² / N²   (t_g, n_g: cluster total and size)
    var_iid       = s² / N;  design effect = var_clustered / var_iid (1 when the items are
    independent, up to the mean cluster size when clusters are all-or-nothing); n_eff = N / deff.
    """
    x = np.asarray(values, dtype=float)
    labels = list(groups)
    if x.size != len(labels):
        raise ValueError(f"{x.size} values but {len(labels)} group labels")
    n = int(x.size)
    index: dict[object, int] = {}
    ids = np.array([index.setdefault(g, len(index)) for g in labels], dtype=int)
    g = len(index)
    if n < 2 or g < 2:
        return ClusterSummary(n, g, 1.0, float(n))
    totals = np.bincount(ids, weights=x, minlength=g)
    sizes = np.bincount(ids, minlength=g).astype(float)
    m = x.mean()
    var_cluster = g / (g - 1) * float(np.sum((totals - m * sizes) ** 2)) / n**2
    var_iid = float(np.var(x, ddof=1)) / n
    if var_iid <= 0:
        return ClusterSummary(n, g, 1.0, float(n))
    deff = max(var_cluster / var_iid, 1.0 / n)
    return ClusterSummary(n, g, deff, n / deff)


def one_sided_p(replicates: np.ndarray, above: float = 0.0) -> float:
    """Bootstrap p-value for H0 'statistic ≤ above': the share of replicates at or below it (+1 smoothing)."""
    reps = np.asarray(replicates, dtype=float)
    return (1 + int(np.sum(reps <= above))) / (reps.size + 1)


def lower_bound(replicates: np.ndarray, alpha: float) -> float:
    """The one-sided (1 − α) lower bound: the α quantile of the replicates."""
    reps = np.asarray(replicates, dtype=float)
    return float(np.quantile(reps, alpha)) if reps.size else -math.inf
