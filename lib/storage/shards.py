"""Shards: one request's configurations made in N pieces (a job array on a cluster, or a loop on one
machine) and merged into the ensemble one run would have made.

Every configuration depends only on (seed, i) (:mod:`lib.rng`), so shard K of N makes the K-th of N
contiguous index ranges (of HMC chains, or of generated samples) and writes it as an ensemble whose
metadata carries ``shard = {index, count, start, stop, total}`` beside the request. :func:`merge`
checks that the shards belong to one request (the same metadata but for the shard and the
per-run entries), that the ranges are disjoint and cover 0 … total − 1, and writes the ensemble
with the request's metadata; for HMC the merged ensemble equals the unsharded one bit for bit
(configurations and acceptance, which the shards carry as integer counts).
"""
from __future__ import annotations

import re

import numpy as np

#: metadata that may differ between the shards of one request (where and how fast each ran)
PER_RUN = ("shard", "device", "configs_sha256", "acceptance", "n_accepted", "n_configs", "batch_size")
#: metadata with one entry per configuration (DM-MC proposals' weights and costs): joined in order
PER_CONFIG = ("log_weight", "nfe")


def parse_shard(text: str) -> tuple[int, int]:
    """``"K/N"`` → (K, N) with 0 ≤ K < N (one-line ``ValueError`` otherwise)."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if not m:
        raise ValueError(f"--shard must be K/N (e.g. 0/4), got {text!r}")
    k, n = int(m.group(1)), int(m.group(2))
    if not (n >= 1 and 0 <= k < n):
        raise ValueError(f"--shard {text}: need 0 <= K < N")
    return k, n


def shard_range(total: int, k: int, n: int) -> tuple[int, int]:
    """The K-th of N contiguous, balanced ranges of 0 … total − 1: [total·K/N, total·(K+1)/N)."""
    if n > total:
        raise ValueError(f"cannot cut {total} items into {n} shards")
    return total * k // n, total * (k + 1) // n


def shard_metadata(k: int, n: int, start: int, stop: int, total: int, unit: str) -> dict:
    return {"index": k, "count": n, "start": start, "stop": stop, "total": total, "unit": unit}


def merge(ensembles, per_configs: int = 1):
    """Check the shards (:class:`lib.storage.Ensemble`, any order) and return ``(configs, metadata)``
    of the merged ensemble; one-line ``ValueError`` for a missing, duplicated or foreign shard.
    ``per_configs``: configurations per unit of the ranges (HMC: ``n_per_chain``)."""
    if not ensembles:
        raise ValueError("no shards to merge")
    shards = []
    for e in ensembles:
        s = e.metadata.get("shard")
        if not isinstance(s, dict):
            raise ValueError(f"{e.path} is not a shard (its metadata has no 'shard' entry)")
        shards.append((s, e))
    ref = {k: v for k, v in shards[0][1].metadata.items() if k not in PER_RUN + PER_CONFIG}
    count, total = shards[0][0]["count"], shards[0][0]["total"]
    for s, e in shards:
        mine = {k: v for k, v in e.metadata.items() if k not in PER_RUN + PER_CONFIG}
        if mine != ref:
            diff = sorted(k for k in set(mine) | set(ref) if mine.get(k) != ref.get(k))
            raise ValueError(f"{e.path} belongs to another request than {shards[0][1].path} (differs in "
                             f"{', '.join(diff)})")
        if (s["count"], s["total"]) != (count, total):
            raise ValueError(f"{e.path} is shard {s['index']}/{s['count']} of {s['total']}, not of {count} shards of "
                             f"{total}")
        if len(e) != (s["stop"] - s["start"]) * per_configs:
            raise ValueError(f"{e.path} holds {len(e)} configurations, its shard range says "
                             f"{(s['stop'] - s['start']) * per_configs}")
        for key in PER_CONFIG:
            if key in e.metadata and len(e.metadata[key]) != len(e):
                raise ValueError(f"{e.path} holds {len(e)} configurations but {len(e.metadata[key])} entries of {key}")
    seen = sorted(s["index"] for s, _ in shards)
    if len(set(seen)) != len(seen):
        dup = sorted({i for i in seen if seen.count(i) > 1})
        raise ValueError(f"shard(s) {', '.join(map(str, dup))} given twice")
    missing = sorted(set(range(count)) - set(seen))
    if missing:
        raise ValueError(f"shard(s) {', '.join(f'{i}/{count}' for i in missing)} missing")
    shards.sort(key=lambda se: se[0]["start"])
    if shards[0][0]["start"] != 0 or shards[-1][0]["stop"] != total or any(
            a[0]["stop"] != b[0]["start"] for a, b in zip(shards, shards[1:])):
        raise ValueError("the shards' ranges do not tile 0 … total − 1")
    configs = np.concatenate([np.asarray(e.configs) for _, e in shards])
    meta = dict(ref)
    accepted = [e.metadata.get("n_accepted") for _, e in shards]
    st = ref.get("settings") if isinstance(ref.get("settings"), dict) else {}
    if all(isinstance(a, (int, float)) for a in accepted) and {"n_burnin", "n_spacing"} <= set(st):
        # the acceptance of the unsharded run: accepted updates over chains × updates per chain
        updates = st["n_burnin"] + st["n_spacing"] * st.get("n_per_chain", 1)
        meta["acceptance"] = sum(accepted) / (total * updates)
        meta["n_accepted"] = sum(accepted)
    for key in PER_CONFIG:
        if all(key in e.metadata for _, e in shards):
            meta[key] = [v for _, e in shards for v in e.metadata[key]]
    meta["merged_from"] = len(shards)
    return configs, meta


__all__ = ["parse_shard", "shard_range", "shard_metadata", "merge", "PER_RUN", "PER_CONFIG"]
