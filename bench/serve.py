"""Benchmark of the chat server: streaming throughput and latency with 1 and 8 concurrent clients.

The server (SFT model of the preset + lore index, retrieval on, one generation worker, queue of 8) runs on 127.0.0.1 in
this process; each client is a thread with the real `openai` client that sends streaming requests one after the other
(the lore questions, greedy, max_tokens 64). Reported per concurrency: requests, completion tokens per second (all
clients together), and p50/p95 of the time to the first token and of the whole request, in milliseconds. The last
line printed is one JSON object.

    python bench/serve.py               # the `tiny` preset (its SFT model is built and cached when absent)
    python bench/serve.py --preset test # the smaller size used by the tests
"""
import argparse, concurrent.futures, json, sys, time
import numpy as np
import openai
from dnf_rlhf.core import PRESETS, Run
from dnf_rlhf.lore import load_corpus, chunk_corpus
from dnf_rlhf.rag import build_retriever, load_questions
from dnf_rlhf.serve import BackgroundServer, Engine, ServeConfig, load_chat_model, make_app

MAX_TOKENS, PER_CLIENT = 64, 6


def client_run(base_url, questions) -> list[dict]:
    "Streaming requests one after the other: time to first token, total time, completion tokens."
    c = openai.OpenAI(base_url=base_url, api_key='unused', max_retries=0, timeout=300)
    out = []
    for q in questions:
        t0, first, tokens = time.perf_counter(), None, 0
        for ch in c.chat.completions.create(model='dnf-rlhf', messages=[{'role': 'user', 'content': q}], max_tokens=MAX_TOKENS,
                                            stream=True, stream_options={'include_usage': True}):
            if first is None and ch.choices and ch.choices[0].delta.content: first = time.perf_counter()
            if ch.usage: tokens = ch.usage.completion_tokens
        end = time.perf_counter()
        out.append({'ttft_ms': ((first or end) - t0) * 1000, 'total_ms': (end - t0) * 1000, 'tokens': tokens})
    return out


def pct(xs, p): return round(float(np.percentile(xs, p)), 1)


def main():
    ap = argparse.ArgumentParser(); ap.add_argument('--preset', default='tiny', choices=['tiny', 'test'])
    a = ap.parse_args()
    run = Run(PRESETS[a.preset])
    preset = run.preset
    model, tok, what = load_chat_model(run)
    retriever = build_retriever(chunk_corpus(load_corpus()), run.cfg('rag'))
    questions = [r.question for r in load_questions(splits=('test',))]
    cfg = ServeConfig(fit_tokens=preset.sft.max_len, workers=1, queue_size=8)
    res = {'preset': a.preset, 'model': what, 'workers': cfg.workers, 'queue_size': cfg.queue_size, 'max_tokens': MAX_TOKENS}
    with BackgroundServer(make_app(Engine(model, tok, retriever, cfg), api_key='')) as srv:
        client_run(srv.base_url, questions[:1])  # warm-up
        for n in (1, 8):
            per = PER_CLIENT if n > 1 else 2 * PER_CLIENT
            jobs = [questions[(i * per + k) % len(questions)] for i in range(n) for k in range(per)]
            t0 = time.perf_counter()
            with concurrent.futures.ThreadPoolExecutor(n) as ex:
                runs = list(ex.map(lambda i: client_run(srv.base_url, jobs[i * per:(i + 1) * per]), range(n)))
            wall = time.perf_counter() - t0
            rows = [r for run in runs for r in run]
            res[f'clients_{n}'] = {'requests': len(rows), 'tokens_per_s': round(sum(r['tokens'] for r in rows) / wall, 1),
                                   'mean_tokens': round(float(np.mean([r['tokens'] for r in rows])), 1),
                                   'ttft_ms_p50': pct([r['ttft_ms'] for r in rows], 50), 'ttft_ms_p95': pct([r['ttft_ms'] for r in rows], 95),
                                   'latency_ms_p50': pct([r['total_ms'] for r in rows], 50), 'latency_ms_p95': pct([r['total_ms'] for r in rows], 95)}
            print(f"{n} client(s): {res[f'clients_{n}']}", file=sys.stderr)
    print(json.dumps(res, ensure_ascii=False))


if __name__ == '__main__': main()
