#!/usr/bin/env python3
"""Compare fusions offline on the candidate lists of `kotae eval retrieval --dump FILE`.

    ./target/debug/kotae eval retrieval --dump /tmp/cand.jsonl
    python3 scripts/eval/fusion_sweep.py /tmp/cand.jsonl

Prints R@1, R@5, MRR@10 and nDCG@10 per language for bm25, dense and several fusions, computed
exactly as `kotae eval retrieval` does (distinct sources, chunks deduplicated by text hash), so
the `kotae` row reproduces its hybrid row (agreement fusion, depth 8, BM25 weight 0.6 when the
lists' top sources are disjoint or BM25's best hit crossed languages, 0.1 when they are the same). Give several dump files (say the
golden set and each outside set) to see every fusion on all of them. Standard library only.
"""
import json
import math
import sys


def metrics(sources, gold):
    ranked = []
    for s in sources:
        if s not in ranked:
            ranked.append(s)
    first = next((i for i, s in enumerate(ranked[:10]) if s in gold), None)
    dcg = sum(1 / math.log2(i + 2) for i, s in enumerate(ranked[:10]) if s in gold)
    ideal = sum(1 / math.log2(i + 2) for i in range(min(len(gold), 10)))
    return (
        float(first is not None and first < 1),
        float(first is not None and first < 5),
        0.0 if first is None else 1 / (first + 1),
        dcg / ideal if ideal else 0.0,
    )


def to_sources(q, fused, top_k=30):
    info = {h["chunk_id"]: h for lst in ("bm25", "dense") for h in q[lst]}
    seen, out = set(), []
    for cid, _ in fused:
        h = info[cid]
        if h["text_hash"] in seen:
            continue
        seen.add(h["text_hash"])
        out.append(h["source"])
        if len(out) == top_k:
            break
    return out


def ranked(acc):
    return sorted(acc.items(), key=lambda x: (-x[1], int(x[0], 16)))


def minmax(lst):
    if not lst:
        return {}
    hi, lo = max(h["score"] for h in lst), min(h["score"] for h in lst)
    return {h["chunk_id"]: (h["score"] - lo) / (hi - lo) if hi > lo else 1.0 for h in lst}


def dbsf_norm(lst):
    if not lst:
        return {}
    xs = [h["score"] for h in lst]
    m = sum(xs) / len(xs)
    sd = (sum((x - m) ** 2 for x in xs) / len(xs)) ** 0.5
    return {h["chunk_id"]: min(1, max(0, (h["score"] - (m - 3 * sd)) / (6 * sd))) if sd > 0 else 1.0 for h in lst}


def weighted(norm, wb):
    def f(q):
        acc = {}
        for lst, w in (("bm25", wb), ("dense", 1 - wb)):
            for c, v in norm(q[lst]).items():
                acc[c] = acc.get(c, 0) + w * v
        return ranked(acc)

    return f


def rrf(wb, k=60):
    def f(q):
        acc = {}
        for lst, w in (("bm25", wb), ("dense", 1 - wb)):
            for r, h in enumerate(q[lst]):
                acc[h["chunk_id"]] = acc.get(h["chunk_id"], 0) + w / (k + r + 1)
        return ranked(acc)

    return f


def dense_margin(lst):
    """Cosine gap between dense's best source and the next distinct one."""
    for h in lst:
        if h["source"] != lst[0]["source"]:
            return lst[0]["score"] - h["score"]
    return 1.0


def margin_adaptive(base, top, tau):
    """More BM25 weight when dense is unsure (its best source barely ahead)."""
    return lambda q: weighted(minmax, base + (top - base) * max(0.0, 1 - dense_margin(q["dense"]) / tau))(q)


def crossing_balanced(wb):
    """The fusion before agreement: `weighted(minmax, wb)`, but equal weights when BM25's best hit matched
    only dictionary translations of the query (`bm25_best_by_translation` in the dump)."""
    return lambda q: weighted(minmax, 0.5 if q.get("bm25_best_by_translation") else wb)(q)


def top_sources(lst, n):
    out = []
    for h in lst:
        if h["source"] not in out:
            out.append(h["source"])
        if len(out) == n:
            break
    return out


def agreement(depth, disagree, agree):
    """Relative fusion whose BM25 weight moves from `disagree` to `agree` with the share of
    distinct sources the two lists' top `depth` have in common (`Fusion::Agreement`); the
    `disagree` weight when BM25's best hit crossed languages by translation."""

    def f(q):
        share = len(set(top_sources(q["bm25"], depth)) & set(top_sources(q["dense"], depth))) / depth
        if q.get("bm25_best_by_translation"):
            share = 0.0
        return weighted(minmax, disagree + (agree - disagree) * share)(q)

    return f


def single(lst):
    return lambda q: [(h["chunk_id"], h["score"]) for h in q[lst]]


def main(paths):
    queries = []
    for path in paths:
        name = path.rsplit("/", 1)[-1].removesuffix(".jsonl")
        for line in open(path, encoding="utf-8"):
            if line.strip():
                q = json.loads(line)
                q["lang"] = f"{name}:{q['lang']}" if len(paths) > 1 else q["lang"]
                queries.append(q)
    langs = sorted({q["lang"] for q in queries})
    fusions = [("bm25", single("bm25")), ("dense", single("dense")), ("kotae", agreement(8, 0.6, 0.1))]
    fusions += [(f"agree {n} {d}/{a}", agreement(n, d, a)) for n in (5, 8) for d, a in ((0.6, 0.3), (0.5, 0.25))]
    fusions += [(f"relative {w}", weighted(minmax, w)) for w in (0.1, 0.2, 0.3, 0.4, 0.5)]
    fusions += [(f"crossing {w}", crossing_balanced(w)) for w in (0.1, 0.2, 0.3)]
    fusions += [(f"dbsf {w}", weighted(dbsf_norm, w)) for w in (0.2, 0.3, 0.4)]
    fusions += [(f"rrf {w}", rrf(w)) for w in (0.2, 0.3, 0.5)]
    fusions += [(f"margin {top}/{tau}", margin_adaptive(0.2, top, tau)) for top in (0.35, 0.5) for tau in (0.005, 0.01)]
    print(f"{'fusion':<18}" + "".join(f"{lang + ': R@1  R@5  MRR  nDCG':<32}" for lang in langs))
    for name, f in fusions:
        row = f"{name:<18}"
        for lang in langs:
            ms = [metrics(to_sources(q, f(q)), q["gold"]) for q in queries if q["lang"] == lang]
            row += f"{'':4}" + " ".join(f"{sum(m[i] for m in ms) / len(ms):.3f}" for i in range(4)) + f"{'':4}"
        print(row)


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1:])
