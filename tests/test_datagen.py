"End-to-end and fault tests of dataset generation against a real loopback OpenAI-compatible server."
import json, os, shutil, signal, subprocess, sys, time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
import pytest
from pydantic import BaseModel, Field
from dnf_rlhf.datagen import Generator, GenConfig, Job, read_log, DATASETS, DNF_TEST_DOCS, STOPPED_EARLY
from dnf_rlhf.formats import read_jsonl
from dnf_rlhf.loopback import LoopbackServer, prompt_hash

SECRET = 'sk-test-DO-NOT-LEAK-0123456789abcdefghijklmnop'
FAST = dict(model='loopback', backoff=0.01, max_backoff=0.05, timeout=2.0)


class Item(BaseModel):
    question: str = Field(min_length=2)
    answer: str = Field(min_length=1)


def items(n, tag='항목'):
    "Jobs whose prompts are told apart by a unique marker, so the server script can target one."
    return [Job(f'item:{i}', 'item', [{'role': 'user', 'content': f'{tag} {i:03d}: 다음 자료로 질문과 답을 만드세요.\n"""\n'
                                      f'머크우드는 타우 부족이 사는 깊은 숲이다. 이 항목의 번호는 {i:03d}이다.\n"""\n'
                                      '형식: {"question": "…", "answer": "…"}'}], Item) for i in range(n)]


def datagen_cmd(out, srv, *extra):
    return [sys.executable, '-m', 'dnf_rlhf.datagen', '--out', str(out), '--base-url', srv.base_url, '--model', 'loopback',
            '--no-progress', '--backoff', '0.01', '--max-backoff', '0.05', '--timeout', '5', *extra]


def cached_prompt_hashes(cache_dir):
    "Prompt hashes (as the server counts them) of every answer in the cache."
    return {prompt_hash(json.loads(p.read_text(encoding='utf-8'))['request']['messages']) for p in Path(cache_dir).glob('*/*.json')}


def wait_for(cond, timeout=30.0, what='condition'):
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout: raise AssertionError(f'timed out after {timeout}s waiting for {what}')
        time.sleep(0.02)


def test_resume_after_sigkill_repeats_no_call_and_loses_nothing(tmp_path, test_env):
    "Kill the generator with SIGKILL right after the server's k-th answer; the rerun calls only for unfinished jobs."
    out, k, n_jobs = tmp_path/'run', 8, 24
    with LoopbackServer(latency=0.02) as srv:
        fired = srv.after(k, hold=True)  # exactly k answers go out; the rest are held until release()
        cmd = datagen_cmd(out, srv, '--tasks', 'qa', 'persona', '--limit', '12', '--concurrency', '4', '--no-build')
        p = subprocess.Popen(cmd, env=test_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert fired.wait(60), 'the server never answered k requests'
            os.kill(p.pid, signal.SIGKILL)
        finally:
            p.kill(); p.communicate(timeout=30)
        assert p.returncode == -signal.SIGKILL
        finished_ids = {r['id'] for r in read_log(out/'results.jsonl')}
        cached = cached_prompt_hashes(out/'cache')
        assert 0 < len(cached) <= k and len(finished_ids) <= len(cached)
        mark = len(srv.log)
        srv.release()
        r = subprocess.run(cmd, env=test_env, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr[-3000:]
        after = srv.counts(since=mark)
        repeated = sum(after[h] for h in cached)
        assert repeated == 0, f'{repeated} calls repeated for answers already paid for'
        assert sum(after.values()) == n_jobs - len(cached)  # every other job asked exactly once
    ids = Counter(r['id'] for r in read_log(out/'results.jsonl'))
    assert len(ids) == n_jobs and max(ids.values()) == 1, 'lost or duplicated results'
    summary = json.loads(r.stdout.strip().splitlines()[-1])['stats']
    assert summary['datagen/skipped'] == len(finished_ids) and summary['datagen/ok'] == n_jobs - len(finished_ids)


def test_malformed_answers_go_to_rejects_with_reason(tmp_path):
    with LoopbackServer() as srv:
        srv.script('malformed', 'malformed', 'malformed', match='항목 002')
        srv.script('invalid', 'invalid', 'invalid', match='항목 005')
        srv.script('broken', match='항목 007')  # slightly broken JSON is repaired, not rejected
        gen = Generator(tmp_path, GenConfig(base_url=srv.base_url, concurrency=3, **FAST), progress=False)
        st = gen.run(items(10))
        assert (st.ok, st.rejected, st.failed) == (8, 2, 0)
        rej = {r['id']: r for r in read_log(tmp_path/'rejects.jsonl')}
        assert set(rej) == {'item:2', 'item:5'} and all(r['final'] and r['attempts'] == 3 for r in rej.values())
        assert 'no JSON object' in rej['item:2']['reason'] and '죄송하지만' in rej['item:2']['answer']
        assert "field 'question': Field required" in rej['item:5']['reason']
        n = len(srv.log)
        assert gen.run(items(10)).skipped == 10 and len(srv.log) == n  # final rejects are not asked again


def test_rate_limits_and_server_errors_are_retried(tmp_path):
    with LoopbackServer(retry_after=0.05) as srv:
        srv.script(*['rate_limit'] * 8, match='항목 000')  # more 429s than max_retries: a rate limit never ends a run
        srv.script('error', 'error', match='항목 001')
        srv.script('hang', match='항목 002')
        srv.script('bad_body', match='항목 003')
        srv.script(*['error'] * 5, match='항목 004')  # more 500s than max_retries: gives up, retried next run
        cfg = GenConfig(base_url=srv.base_url, concurrency=4, max_retries=2, **{**FAST, 'timeout': 0.5})
        gen = Generator(tmp_path, cfg, progress=False)
        st = gen.run(items(6))
        assert (st.ok, st.failed, st.rejected) == (5, 1, 0)
        assert st.retries['429'] == 8 and st.retries['500'] == 2 + 2 and st.retries['timeout'] == 1 and st.retries['bad response'] == 1
        assert [w for w in st.waits if w[0] == '429'] == [('429', 0.05)] * 8  # Retry-After honoured, not our backoff
        assert gen.rejects()[0]['id'] == 'item:4' and not gen.rejects()[0]['final']
        st2 = gen.run(items(6))  # the transport failure is tried again (the script has two 500s left, then ok)
        assert (st2.skipped, st2.ok, st2.failed) == (5, 1, 0) and gen.rejects() == []


def test_concurrency_is_bounded(tmp_path):
    with LoopbackServer() as srv:
        srv.after(0, hold=True)  # hold every answer: the client fills its concurrency and no more
        gen = Generator(tmp_path, GenConfig(base_url=srv.base_url, concurrency=3, **FAST), progress=False)
        with ThreadPoolExecutor(1) as ex:
            fut = ex.submit(gen.run, items(12))
            wait_for(lambda: len(srv.log) >= 3, what='three requests in flight')
            srv.release()
            assert fut.result(timeout=60).ok == 12
        assert srv.max_in_flight == 3


def test_budget_cap_stops_cleanly_and_resumes(tmp_path, test_env):
    out = tmp_path/'run'
    with LoopbackServer() as srv:
        price = ['--price', 'loopback', '200', '200']
        dry = subprocess.run(datagen_cmd(out, srv, '--tasks', 'qa', '--limit', '16', '--dry-run', *price),
                             env=test_env, capture_output=True, text=True, timeout=120)
        budget = round(json.loads(dry.stdout.strip().splitlines()[-1])['dry_run']['usd'] / 4, 4)  # a quarter of it
        r = subprocess.run(datagen_cmd(out, srv, '--tasks', 'qa', '--limit', '16', '--concurrency', '2',
                                       '--budget-usd', str(budget), *price),
                           env=test_env, capture_output=True, text=True, timeout=120)
        assert r.returncode == STOPPED_EARLY == 3, r.stderr[-3000:]  # not 2: that is bad input
        st = json.loads(r.stdout.strip().splitlines()[-1])['stats']
        ledger = read_log(out/'ledger.jsonl')
        spent, biggest = sum(l['usd'] for l in ledger), max(l['usd'] for l in ledger)
        assert st['datagen/stopped'] == 'budget' and 0 < st['datagen/ok'] < 16
        assert spent <= budget + biggest  # each request's estimated cost is reserved before it is sent
        assert 'budget' in r.stderr
        done = cached_prompt_hashes(out/'cache'); mark = len(srv.log)
        r2 = subprocess.run(datagen_cmd(out, srv, '--tasks', 'qa', '--limit', '16', '--concurrency', '2', '--budget-usd', '100', *price),
                            env=test_env, capture_output=True, text=True, timeout=120)
        assert r2.returncode == 0, r2.stderr[-3000:]
        assert not set(srv.counts(since=mark)) & done
        assert len({r['id'] for r in read_log(out/'results.jsonl')}) == 16
        assert sum(len(read_jsonl(out/'data'/f'sft_{s}.jsonl')) for s in ('train', 'test')) == 16 * 3


def test_budget_is_reserved_before_each_request(tmp_path):
    "16 requests in flight used to start on the same $0 total and overshoot the cap manyfold; each now reserves its estimate."
    with LoopbackServer() as srv:
        cfg = GenConfig(base_url=srv.base_url, concurrency=16, prices={'loopback': (1000.0, 1000.0)}, **FAST)
        one = Generator(tmp_path/'probe', cfg, progress=False).estimate(items(1))['usd']  # one request's estimated cost
        cfg.budget_usd = 1.5 * one
        gen = Generator(tmp_path/'run', cfg, progress=False)
        st = gen.run(items(48))
    ledger = read_log(tmp_path/'run'/'ledger.jsonl')
    spent, biggest = sum(l['usd'] for l in ledger), max(l['usd'] for l in ledger)
    assert st.stopped == 'budget' and st.calls == len(ledger) >= 1
    assert spent <= cfg.budget_usd + biggest, f'spent ${spent:.4f}, cap ${cfg.budget_usd:.4f} ({spent / cfg.budget_usd:.1f}x)'
    assert spent > cfg.budget_usd - one - 1e-4  # and it used the cap: it stopped when the next request could not fit


def test_every_job_failing_is_an_error_and_keeps_the_data(tmp_path, test_env):
    "A run in which every job failed exits non-zero and leaves the earlier data files as they were (not empty)."
    out = tmp_path/'run'
    with LoopbackServer() as srv:
        cmd = datagen_cmd(out, srv, '--tasks', 'qa', '--limit', '2')
        r = subprocess.run(cmd, env=test_env, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr[-3000:]
        data = {p.name: p.read_bytes() for p in (out/'data').iterdir()}
        assert read_jsonl(out/'data'/'sft_train.jsonl')
        (out/'results.jsonl').unlink(); shutil.rmtree(out/'cache')  # the same jobs again, now on a broken model
        srv.script(*['malformed'] * 20)
        r2 = subprocess.run(cmd, env=test_env, capture_output=True, text=True, timeout=120)
    assert r2.returncode == 1 and 'all 2 jobs failed' in r2.stderr and 'Traceback' not in r2.stderr, r2.stderr[-3000:]
    assert {p.name: p.read_bytes() for p in (out/'data').iterdir()} == data


def test_quota_exhaustion_stops_the_run(tmp_path):
    with LoopbackServer() as srv:
        srv.script('quota', match='항목 003')
        gen = Generator(tmp_path, GenConfig(base_url=srv.base_url, concurrency=1, **FAST), progress=False)
        st = gen.run(items(8))
        assert st.stopped == 'quota' and st.ok <= 3 and st.failed == st.rejected == 0
        assert srv.log[-1].behaviour == 'quota'  # no request was started after the account ran dry
        assert len(gen.finished()) == st.ok and not gen.rejects()  # the rest is left for the next run


def test_api_key_appears_in_no_written_file(tmp_path, test_env):
    out, env = tmp_path/'run', dict(test_env, OPENAI_API_KEY=SECRET)
    with LoopbackServer() as srv:
        srv.script('rate_limit', 'error', match="'안톤'에 대한 자료")
        srv.script('malformed', 'malformed', 'malformed', match="'바칼'에 대한 자료")
        r = subprocess.run(datagen_cmd(out, srv, '--tasks', 'qa', '--limit', '4'), env=env,
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr[-3000:]
        srv.script('unauthorized')  # a server that echoes the key in its 401 message
        (out/'results.jsonl').unlink()  # force a new request
        for p in (out/'cache').glob('*/*.json'): p.unlink()
        r2 = subprocess.run(datagen_cmd(out, srv, '--tasks', 'qa', '--limit', '1'), env=env, capture_output=True, text=True, timeout=120)
        assert r2.returncode == 1 and 'refused the API key' in r2.stderr
    written = [p for p in out.rglob('*') if p.is_file()]
    assert {'rejects.jsonl', 'ledger.jsonl', 'config.json'} <= {p.name for p in written}
    assert 'no JSON object' in (out/'rejects.jsonl').read_text(encoding='utf-8')
    leaks = [str(p) for p in written if SECRET.encode() in p.read_bytes() or SECRET[-8:].encode() in p.read_bytes()]
    assert leaks == [], f'API key written to {leaks}'
    for stream in (r.stdout, r.stderr, r2.stdout, r2.stderr): assert SECRET not in stream and SECRET[-8:] not in stream


def test_datasets_split_by_document(tmp_path, test_env):
    out = tmp_path/'run'
    with LoopbackServer() as srv:
        # the first chunk of every document, persona answers (-> sft, ranked, pairs, ppo), questions (-> retrieval), Self-Instruct
        r = subprocess.run(datagen_cmd(out, srv, '--tasks', 'persona', 'qa', '--limit', '66', '--concurrency', '8', '--self-instruct', '4'),
                           env=test_env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    data = json.loads(r.stdout.strip().splitlines()[-1])['data']
    train_docs = set()
    for k in DATASETS:
        train = {x.get('doc_id') for x in read_jsonl(out/'data'/f'{k}_train.jsonl')}
        test = {x.get('doc_id') for x in read_jsonl(out/'data'/f'{k}_test.jsonl')}
        assert train and test and not train & test, k
        train_docs |= train
    assert not train_docs & set(DNF_TEST_DOCS)  # the DnF project's test questions stay unseen
    assert data['datagen/self_instruct_kept'] > 0 and data['datagen/ranked_train'] + data['datagen/ranked_test'] == 66


def test_the_pipeline_trains_on_generated_data(tmp_path, test_env):
    "SFT -> reward model -> PPO and the retrieval index, all from a datagen output folder (`datasets_dir`), at the test size."
    from conftest import cli
    from dnf_rlhf.core import ProjectConfig, load_json
    gen = tmp_path/'gen'
    with LoopbackServer() as srv:
        r = subprocess.run(datagen_cmd(gen, srv, '--tasks', 'qa', 'persona', 'redirect', '--limit', '40', '--concurrency', '8'),
                           env=test_env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert read_jsonl(gen/'data'/'retrieval_train.jsonl')  # the questions RAG is evaluated on
    project = tmp_path/'generated.json'
    ProjectConfig(name='generated', datasets_dir=str(gen/'data')).save(project)
    out = tmp_path/'run'
    r = cli('run', '--preset', 'tiny', '--out', str(out), '--project', str(project),
            '--stages', 'lore', 'tinybase', 'sft', 'rm', 'ppo', 'rag', env=test_env, timeout=1500)
    assert r.returncode == 0, r.stderr[-3000:]
    for stage, data in (('sft', 'sft_train.jsonl'), ('rm', 'pairs_train.jsonl'), ('ppo', 'ppo_train.jsonl')):
        m = load_json(out/stage/'manifest.json')
        assert m['inputs'][data]['path'] == str(gen/'data'/data), (stage, m['inputs'])  # trained on the generated files
    sft, rm = load_json(out/'sft'/'metrics.json'), load_json(out/'rm'/'metrics.json')
    assert 0 < sft['sft/train_examples'] <= len(read_jsonl(gen/'data'/'sft_train.jsonl'))  # less the validation slice
    assert rm['rm/train_pairs'] > 0 and load_json(out/'ppo'/'metrics.json')['ppo/steps'] > 0
    rag = load_json(out/'rag'/'metrics.json')
    assert rag['rag/bm25_all_recall@5'] > 0.5, rag  # the generated questions find the chunks they were written from
