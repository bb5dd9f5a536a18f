"""Weighted reciprocal rank fusion: one ranking out of several engines' rankings.

Why RRF and not a weighted sum of scores: the engines' scores live on unrelated scales (ts_rank_cd is unbounded
and grows with document length and term counts, trigram similarity is 0..1, cosine distance is 0..2 and bunched
near 0.5 for this model), so any score blend needs per-corpus normalisation that drifts as the store grows.
Ranks need none: a record's fused score is sum(weight_e / (k + rank_e)) over the engines that found it (rank 1 =
best). A record several engines agree on rises; one engine's outlier cannot swamp the others. The weights and k
are tuned on bench/eval_queries.json (see search.py for the values and the numbers behind them).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Hashable, Mapping, Sequence


@dataclass
class Fused:
    key: Hashable
    score: float
    ranks: dict[str, int] = field(default_factory=dict)


def weighted_rrf(
    rankings: Mapping[str, Sequence[Hashable]], weights: Mapping[str, float], k: float = 60.0
) -> list[Fused]:
    """Fuse best-first key lists per engine into one best-first list; ties keep the first engine's order.

    A key listed twice by one engine counts at its best rank only. Engines without a weight count 1.0.
    """
    fused: dict[Hashable, Fused] = {}
    order: dict[Hashable, int] = {}
    for engine, keys in rankings.items():
        weight = weights.get(engine, 1.0)
        for rank, key in enumerate(keys, start=1):
            entry = fused.get(key)
            if entry is None:
                entry = fused[key] = Fused(key, 0.0)
                order[key] = len(order)
            if engine in entry.ranks:
                continue
            entry.ranks[engine] = rank
            entry.score += weight / (k + rank)
    return sorted(fused.values(), key=lambda f: (-f.score, order[f.key]))
