"""Benchmark of retrieval: quality on the demo questions, build time, single-query latency, bm25s vs rank_bm25.

- recall@1, recall@5 and MRR@10 of `bm25`, `dense` (the tiny embedder) and `hybrid` (RRF) on the demo retrieval
  questions (train + test; nothing in retrieval is trained on them), overall and on the particle-attached form;
- index build seconds (Kiwi + BM25 + embedding; the tiny embedder's training is reported apart) and single-query
  p50/p95 milliseconds on the lore corpus and on ../shared/data/dnf/dnf_homepage_tip.json (268 real guide posts,
  chunked like the lore; null without ../shared);
- bm25_speedup_vs_rank_bm25: all guide-post titles as one batch of queries, top 10, bm25s vs rank_bm25's BM25Okapi on
  the same Kiwi tokens of the same chunks (target >= 10; null without ../shared).

The last line printed is one JSON object.

    python bench/rag.py
"""
import json, sys, time
from pathlib import Path
import numpy as np
from dnf_rlhf.lore import Doc, load_corpus, chunk_corpus
from dnf_rlhf.rag import (IndexConfig, build_retriever, evaluate_retrieval, kiwi, load_questions, morphemes, passage_text,
                          tiny_embedder_path)

GUIDES = Path(__file__).resolve().parents[2]/'shared'/'data'/'dnf'/'dnf_homepage_tip.json'
N_LATENCY = 200  # single queries timed per corpus and mode


def guide_docs(path=GUIDES) -> list[Doc]:
    "The guide posts as documents (title, category1, content columns of the JSON table)."
    t = json.loads(path.read_text(encoding='utf-8'))
    return [Doc(f'guide-{k}', t['title'][k].strip() or f'guide {k}', (t['category1'][k] or 'guide').strip(), t['content'][k].strip(),
                'dnf homepage tips', str(path)) for k in t['title'] if (t['content'][k] or '').strip()]


def latency_ms(retriever, queries, mode) -> dict:
    "p50/p95 ms of one query at a time (after one warm-up query)."
    retriever.search(queries[0], k=5, mode=mode)
    ts = []
    for q in (queries * (N_LATENCY // len(queries) + 1))[:N_LATENCY]:
        t0 = time.perf_counter(); retriever.search(q, k=5, mode=mode); ts.append((time.perf_counter() - t0) * 1000)
    return {'p50': round(float(np.percentile(ts, 50)), 3), 'p95': round(float(np.percentile(ts, 95)), 3)}


def corpus_bench(docs, queries) -> dict:
    chunks = chunk_corpus(docs)
    t0 = time.perf_counter(); tiny_embedder_path(chunks); train_s = time.perf_counter() - t0  # cached after the first run
    t0 = time.perf_counter(); r = build_retriever(chunks); build_s = time.perf_counter() - t0
    t0 = time.perf_counter(); build_retriever(chunks, IndexConfig(embedder=None)); bm25_build_s = time.perf_counter() - t0
    out = {'docs': len(docs), 'chunks': len(chunks), 'embedder_train_or_load_s': round(train_s, 2),
           'build_s': round(build_s, 2), 'bm25_build_s': round(bm25_build_s, 2)}
    for mode in r.modes: out[f'{mode}_query_ms'] = latency_ms(r, queries, mode)
    return out, r, chunks


def speedup_vs_rank_bm25(chunks, queries) -> dict:
    "Batched top-10 retrieval over the same Kiwi tokens: bm25s vs rank_bm25 (scores every chunk per query)."
    import bm25s
    from rank_bm25 import BM25Okapi
    corpus = morphemes([passage_text(c) for c in chunks])
    qtok = morphemes(queries)
    bm = bm25s.BM25(method='lucene'); bm.index(corpus, show_progress=False)
    ok = BM25Okapi(corpus)
    bm.retrieve(qtok[:2], k=10, show_progress=False)  # warm-up
    t0 = time.perf_counter(); bm.retrieve(qtok, k=10, show_progress=False); t_bm25s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for q in qtok: np.argsort(-ok.get_scores(q))[:10]
    t_rank = time.perf_counter() - t0
    return {'queries': len(queries), 'bm25s_s': round(t_bm25s, 4), 'rank_bm25_s': round(t_rank, 4),
            'bm25_speedup_vs_rank_bm25': round(t_rank / t_bm25s, 1)}


def main():
    res = {}
    import sentence_transformers; kiwi()  # one-off import and analyser start-up are not index building
    questions = load_questions()
    lore, r, _ = corpus_bench(load_corpus(), [q.question for q in questions])
    res['lore'] = lore
    rows = evaluate_retrieval(r, questions)
    res['quality'] = {f"{x['mode']}": {k: round(x[k], 4) for k in ('recall@1', 'recall@5', 'mrr')} for x in rows if x['form'] == 'all'}
    res['quality_particle'] = {f"{x['mode']}": {k: round(x[k], 4) for k in ('recall@1', 'recall@5', 'mrr')} for x in rows if x['form'] == 'particle'}
    res['questions'] = len(questions)
    for x in rows: print(f"{x['mode']:>7} {x['form']:>10} n={x['n']:>3} r@1={x['recall@1']:.3f} r@5={x['recall@5']:.3f} mrr={x['mrr']:.3f}", file=sys.stderr)
    if GUIDES.exists():
        docs = guide_docs()
        titles = [d.title for d in docs]
        res['guides'], _, gchunks = corpus_bench(docs, titles)
        res['guides'].update(speedup_vs_rank_bm25(gchunks, titles))
        res['bm25_speedup_vs_rank_bm25'] = res['guides']['bm25_speedup_vs_rank_bm25']
    else:
        res['guides'] = None; res['bm25_speedup_vs_rank_bm25'] = None
        print(f'{GUIDES} not found: guide-post numbers are null', file=sys.stderr)
    print(json.dumps(res, ensure_ascii=False))


if __name__ == '__main__': main()
