#!/usr/bin/env python3
"""Plain-library BM25 baseline on the outside evaluation: what a default BM25 does with the
same documents and questions, for `kotae eval retrieval` to be compared against.

English: bm25s with its English stop words and the Snowball stemmer (PyStemmer).
Japanese: bm25s over character bigrams (no dictionary), the usual no-frills baseline.
Each HTML file is one document (its text, tags removed), ranked whole; nDCG@10, MRR@10 and
Recall@1/5/10 per set, computed like `kotae eval retrieval` (a file counts once).

    python3 -m venv .cache/bm25-venv && .cache/bm25-venv/bin/pip install bm25s PyStemmer
    .cache/bm25-venv/bin/python scripts/eval/outside/baseline.py .cache/outside evals/outside/en.dev.jsonl ...
"""
import glob
import html
import json
import math
import os
import re
import sys
from html.parser import HTMLParser

import bm25s
import Stemmer


class _Text(HTMLParser):
    def __init__(self):
        super().__init__()
        self.out, self.skip = [], 0

    def handle_starttag(self, tag, attrs):
        if tag in ("script", "style"):
            self.skip += 1
        self.out.append(" ")

    def handle_endtag(self, tag):
        if tag in ("script", "style"):
            self.skip -= 1

    def handle_data(self, data):
        if not self.skip:
            self.out.append(data)


def page_text(path):
    p = _Text()
    p.feed(open(path, encoding="utf-8", errors="replace").read())
    return html.unescape(re.sub(r"\s+", " ", "".join(p.out)))


def bigrams(text):
    out = []
    for run in re.findall(r"[A-Za-z0-9]+|[^\sA-Za-z0-9]+", text.lower()):
        if run[0].isascii():
            out.append(run)
        elif len(run) == 1:
            out.append(run)
        else:
            out.extend(run[i : i + 2] for i in range(len(run) - 1))
    return out


def metrics(ranked, gold):
    first = next((i for i, s in enumerate(ranked[:10]) if s in gold), None)
    dcg = sum(1 / math.log2(i + 2) for i, s in enumerate(ranked[:10]) if s in gold)
    ideal = sum(1 / math.log2(i + 2) for i in range(min(len(gold), 10)))
    return {
        "recall_at_1": float(first is not None and first < 1),
        "recall_at_5": float(first is not None and first < 5),
        "recall_at_10": float(first is not None),
        "mrr_at_10": 0.0 if first is None else 1 / (first + 1),
        "ndcg_at_10": dcg / ideal if ideal else 0.0,
    }


def main():
    root, sets = sys.argv[1], sys.argv[2:]
    stemmer = Stemmer.Stemmer("english")
    for path in sets:
        qs = [json.loads(l) for l in open(path, encoding="utf-8") if l.strip()]
        # en.*, en2ja.* → which corpus the questions are searched in
        name = os.path.basename(path)
        doc_lang = "ja" if name.startswith(("ja.", "en2ja.")) else "en"
        files = sorted(glob.glob(f"{root}/{doc_lang}/**/*.html", recursive=True))
        ids = [os.path.relpath(f, f"{root}/{doc_lang}") for f in files]
        texts = [page_text(f) for f in files]
        q_lang = qs[0]["lang"] if qs else "en"
        if doc_lang == "en" and q_lang == "en":
            corpus = bm25s.tokenize(texts, stopwords="en", stemmer=stemmer, show_progress=False)
            tok_q = lambda q: bm25s.tokenize([q], stopwords="en", stemmer=stemmer, show_progress=False)
        else:
            corpus = [bigrams(t) for t in texts]
            tok_q = lambda q: [bigrams(q)]
        retriever = bm25s.BM25()
        retriever.index(corpus, show_progress=False)
        totals = {}
        for q in qs:
            toks = tok_q(q["query"])
            if not isinstance(toks, list):
                docs, _ = retriever.retrieve(toks, k=10, show_progress=False)
            else:
                docs, _ = retriever.retrieve(toks, k=10, show_progress=False) if toks[0] else ([[]], None)
            ranked = [ids[int(i)] for i in docs[0]]
            for k, v in metrics(ranked, q["gold"]).items():
                totals[k] = totals.get(k, 0.0) + v / len(qs)
        print(f"{name}\t{len(qs)} q\t" + "  ".join(f"{k} {v:.3f}" for k, v in totals.items()))


if __name__ == "__main__":
    main()
