"""Benchmark of the chat server: streaming throughput and latency with 1 and 8 concurrent clients.

The server is the real command (`dnf-rlhf serve`: the preset's SFT model + lore index, retrieval on, the default batch
and queue) in its own process on 127.0.0.1, so that the clients do not share its interpreter; each client is a thread
with the real `openai` client that sends streaming requests one after the other (greedy, max_tokens 64). Both runs ask
the same questions (the lore test questions): one client asks all of them in turn, then eight clients ask them
together, a sixth each. Reported per run: requests, completion tokens per second (all clients together), mean answer
tokens, p50/p95 of the time to the first token and of the whole request (ms), then the ratios the serving issue
targets (8-client tokens/s over 1-client tokens/s, 8-client p95 latency over 1-client p95 latency) and the machine's
load average before the run. The last line printed is one JSON object.

    python bench/serve.py                 # the `tiny` preset (its SFT model and index are built and cached when absent)
    python bench/serve.py --preset test   # the smaller size used by the tests
    python bench/serve.py --batch 1       # the server generating one request at a time (for comparison)
"""
import argparse, concurrent.futures, json, os, socket, subprocess, sys, tempfile, time
import httpx, numpy as np, openai
from dnf_rlhf.rag import load_questions

MAX_TOKENS, CLIENTS = 64, 8
SERVE = 'import sys; from dnf_rlhf.cli import main; sys.exit(main(["serve", *sys.argv[1:]]))'  # `dnf-rlhf serve`


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


def measure(base_url, questions, n:int) -> dict:
    "`n` clients asking `questions` together (client i asks every n-th, from the i-th): throughput and latency."
    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(n) as ex:
        runs = list(ex.map(lambda i: client_run(base_url, questions[i::n]), range(n)))
    wall = time.perf_counter() - t0
    rows = [r for run in runs for r in run]
    return {'requests': len(rows), 'tokens_per_s': round(sum(r['tokens'] for r in rows) / wall, 1),
            'mean_tokens': round(float(np.mean([r['tokens'] for r in rows])), 1),
            'ttft_ms_p50': pct([r['ttft_ms'] for r in rows], 50), 'ttft_ms_p95': pct([r['ttft_ms'] for r in rows], 95),
            'latency_ms_p50': pct([r['total_ms'] for r in rows], 50), 'latency_ms_p95': pct([r['total_ms'] for r in rows], 95)}


def start_server(preset:str, extra:list[str], log) -> tuple[subprocess.Popen, str]:
    "`dnf-rlhf serve` on a free loopback port; waits (up to 15 min: a first run builds the model) until /health answers."
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); port = s.getsockname()[1]
    p = subprocess.Popen([sys.executable, '-c', SERVE, '--preset', preset, '--port', str(port), *extra],
                         stdout=log, stderr=subprocess.STDOUT, env={**os.environ, 'DNF_RLHF_API_KEY': ''})
    deadline = time.monotonic() + 900
    while True:
        if p.poll() is not None: raise RuntimeError(f'the server exited with {p.returncode}; its log: {log.name}')
        try:
            if httpx.get(f'http://127.0.0.1:{port}/health', timeout=5).status_code == 200: return p, f'http://127.0.0.1:{port}'
        except httpx.HTTPError: pass
        if time.monotonic() > deadline: p.kill(); raise RuntimeError('the server did not come up in 15 minutes')
        time.sleep(0.5)


def main():
    ap = argparse.ArgumentParser(); ap.add_argument('--preset', default='tiny', choices=['tiny', 'test'])
    ap.add_argument('--batch', type=int, default=None, help="the server's --batch (default: its own default)")
    a = ap.parse_args()
    questions = [r.question for r in load_questions(splits=('test',))][:48]
    load = os.getloadavg()[0]
    log = tempfile.NamedTemporaryFile('w+', prefix='bench-serve-', suffix='.log', delete=False)
    p, url = start_server(a.preset, ['--batch', str(a.batch)] if a.batch else [], log)
    try:
        health = httpx.get(f'{url}/health', timeout=10).json()
        client_run(f'{url}/v1', questions[:2])  # warm-up
        res = {'preset': a.preset, 'server': {k: health.get(k) for k in ('batch_size', 'workers', 'capacity')},
               'max_tokens': MAX_TOKENS, 'questions': len(questions), 'cpus': os.cpu_count(), 'load_avg_1min_before': load}
        for n in (1, CLIENTS):
            res[f'clients_{n}'] = measure(f'{url}/v1', questions, n)
            print(f"{n} client(s): {res[f'clients_{n}']}", file=sys.stderr)
        one, many = res['clients_1'], res[f'clients_{CLIENTS}']
        res['throughput_ratio'] = round(many['tokens_per_s'] / one['tokens_per_s'], 2)  # target >= 4
        res['p95_latency_ratio'] = round(many['latency_ms_p95'] / one['latency_ms_p95'], 2)  # target <= 2
        res['peak_batch'] = httpx.get(f'{url}/health', timeout=10).json().get('peak_batch')
    finally:
        p.terminate(); p.wait(60)
    print(json.dumps(res, ensure_ascii=False))


if __name__ == '__main__': main()
