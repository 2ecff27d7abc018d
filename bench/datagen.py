"""Benchmark of dataset generation against the loopback server (no fault injection).

200 jobs (QA + persona prompts for 100 lore chunks) at 100 ms server latency, run by the real command line
(`python -m dnf_rlhf.datagen`) in a subprocess with concurrency 16 and with concurrency 1; then a run that is
SIGKILLed after the server's 60th answer and resumed. The last line printed is one JSON object:
speedup_c16_vs_c1 (target >= 10), repeated_calls_after_resume, lost and duplicated (targets 0).

    python bench/datagen.py
"""
import json, os, signal, subprocess, sys, tempfile, time
from collections import Counter
from pathlib import Path
from dnf_rlhf.datagen import read_log
from dnf_rlhf.loopback import LoopbackServer, prompt_hash

LATENCY, CHUNKS, KILL_AFTER = 0.1, 100, 60
JOBS = 2 * CHUNKS


def cmd(out, srv, concurrency):
    return [sys.executable, '-m', 'dnf_rlhf.datagen', '--out', str(out), '--base-url', srv.base_url, '--model', 'loopback',
            '--tasks', 'qa', 'persona', '--limit', str(CHUNKS), '--concurrency', str(concurrency), '--no-progress', '--no-build',
            '--timeout', '30']


def run(out, srv, concurrency) -> dict:
    "Run the generator to completion; its own summary (generation time excludes interpreter start-up)."
    r = subprocess.run(cmd(out, srv, concurrency), capture_output=True, text=True, timeout=600)
    if r.returncode != 0: raise SystemExit(f'generator failed ({r.returncode}):\n{r.stderr[-3000:]}')
    return json.loads(r.stdout.strip().splitlines()[-1])['stats']


def main():
    res = {'jobs': JOBS, 'latency_s': LATENCY}
    with tempfile.TemporaryDirectory() as d, LoopbackServer(latency=LATENCY) as srv:
        d = Path(d)
        for c in (16, 1):
            st = run(d/f'c{c}', srv, c)
            assert st['datagen/ok'] == JOBS and st['datagen/calls'] == JOBS, st
            res[f'seconds_c{c}'] = st['datagen/seconds']
            res[f'items_per_s_c{c}'] = round(JOBS / st['datagen/seconds'], 2)
            print(f'concurrency {c:>2}: {JOBS} jobs in {st["datagen/seconds"]:.2f} s', file=sys.stderr)
        res['speedup_c16_vs_c1'] = round(res['seconds_c1'] / res['seconds_c16'], 2)

        # kill -9 after the server's 60th answer (later answers are held, so exactly 60 went out), then resume
        out = d/'resume'
        fired = srv.after(KILL_AFTER, hold=True)
        p = subprocess.Popen(cmd(out, srv, 16), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            if not fired.wait(120): raise SystemExit('the server never reached the kill point')
            os.kill(p.pid, signal.SIGKILL)
        finally:
            p.kill(); p.wait(30)
        cached = {prompt_hash(json.loads(f.read_text(encoding='utf-8'))['request']['messages']) for f in (out/'cache').glob('*/*.json')}
        finished_at_kill = len({r['id'] for r in read_log(out/'results.jsonl')})
        mark = len(srv.log)
        srv.release()
        st = run(out, srv, 16)
        after = srv.counts(since=mark)
        ids = Counter(r['id'] for r in read_log(out/'results.jsonl'))
        res.update(killed_after_answers=KILL_AFTER, cached_at_kill=len(cached), finished_at_kill=finished_at_kill,
                   calls_after_resume=sum(after.values()),
                   repeated_calls_after_resume=sum(after[h] for h in cached),
                   lost=JOBS - len(ids), duplicated=sum(n - 1 for n in ids.values()))
    print(json.dumps(res))


if __name__ == '__main__': main()
