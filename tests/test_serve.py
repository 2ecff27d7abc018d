"""The chat server on 127.0.0.1: the real `openai` client (JSON and SSE), /query, auth, validation, the bounded queue,
the input guard, merged models, the CLI, and the dataset generator pointed at this server."""
import concurrent.futures, json, os, socket, subprocess, sys, time
from contextlib import contextmanager
import httpx, openai, pytest
from dnf_rlhf.core import Run, cache_root, get_preset, load_json
from dnf_rlhf.lore import load_corpus, chunk_corpus
from dnf_rlhf.rag import build_retriever
from dnf_rlhf.serve import *

Q = [{'role': 'user', 'content': '바칼의 본모습은 무엇인가요?'}]
KEY = 'test-key-9f8e7d6c5b4a'

@pytest.fixture(scope='module')
def chat_model():
    "The SFT model of the `test` size (built and cached on first use) and its tokenizer."
    model, tok, what = load_chat_model(Run(get_preset('test')))
    assert 'sft' in what  # the SFT adapter, never the bare base model
    return model, tok

@pytest.fixture(scope='module')
def chunks(): return chunk_corpus(load_corpus())

@pytest.fixture(scope='module')
def retriever(chunks): return build_retriever(chunks)

@pytest.fixture
def serve(chat_model, retriever):
    "Start a server (bounded start and stop) with ServeConfig overrides; yields (server, engine)."
    @contextmanager
    def start(api_key='', **over):
        cfg = ServeConfig(**{'fit_tokens': get_preset('test').sft.max_len, 'max_tokens_default': 32, **over})
        engine = Engine(*chat_model, retriever, cfg)
        with BackgroundServer(make_app(engine, api_key=api_key)) as srv: yield srv, engine
    return start

def _client(srv, key='unused'): return openai.OpenAI(base_url=srv.base_url, api_key=key, max_retries=0, timeout=120)

def test_openai_client_json_and_streaming_agree(serve, chunks):
    with serve() as (srv, _):
        c = _client(srv)
        r = c.chat.completions.create(model='dnf-rlhf', messages=Q, max_tokens=32)
        text = r.choices[0].message.content
        assert text and r.choices[0].finish_reason in ('stop', 'length')
        assert r.usage.prompt_tokens > 0 and 0 < r.usage.completion_tokens <= 32
        assert r.sources and set(r.sources) <= {ch.id for ch in chunks}
        pieces, sources, usage = [], None, None
        for ch in c.chat.completions.create(model='dnf-rlhf', messages=Q, max_tokens=32, stream=True, stream_options={'include_usage': True}):
            sources = sources if sources is not None else getattr(ch, 'sources', None)
            usage = ch.usage or usage
            if ch.choices and ch.choices[0].delta.content: pieces.append(ch.choices[0].delta.content)
        assert ''.join(pieces) == text and len(pieces) > 1  # streamed in pieces, same greedy answer
        assert sources == r.sources and usage.completion_tokens == r.usage.completion_tokens

def test_sources_are_the_chunks_given_and_retrieval_can_be_turned_off(serve):
    with serve() as (srv, _):
        res = httpx.post(f'{srv.url}/query', json={'query': '머크우드는 어떤 곳인가요?'}, timeout=120).json()
        assert set(res) == {'response', 'sources'} and res['response']
        assert any(s.startswith('region-murkwood#') for s in res['sources'])
        off = httpx.post(f'{srv.url}/query', json={'query': '머크우드는 어떤 곳인가요?', 'retrieval': False}, timeout=120).json()
        assert off['sources'] == []
        r = _client(srv).chat.completions.create(model='x', messages=Q, max_tokens=8, extra_body={'retrieval': False})
        assert r.sources == []
    with serve(retrieval=False) as (srv, _):
        assert httpx.post(f'{srv.url}/query', json={'query': '머크우드는?'}, timeout=120).json()['sources'] == []

def test_health_and_models(serve):
    with serve(queue_size=3, workers=1) as (srv, _):
        h = httpx.get(f'{srv.url}/health', timeout=10).json()
        assert h['status'] == 'ok' and h['capacity'] == 4 and h['in_system'] == 0
        assert [m.id for m in _client(srv).models.list()] == ['dnf-rlhf']

def test_bearer_key(serve, caplog):
    with serve(api_key=KEY) as (srv, _):
        for headers in ({}, {'Authorization': 'Bearer wrong-key'}, {'Authorization': KEY}):
            r = httpx.post(f'{srv.base_url}/chat/completions', json={'messages': Q}, headers=headers, timeout=30)
            assert r.status_code == 401 and r.json()['error']['code'] == 'invalid_api_key'
            assert 'wrong-key' not in r.text and KEY not in r.text
        with pytest.raises(openai.AuthenticationError): _client(srv, 'wrong-key').chat.completions.create(model='x', messages=Q)
        assert httpx.post(f'{srv.url}/query', json={'query': '겐트?'}, timeout=30).status_code == 401
        ok = _client(srv, KEY).chat.completions.create(model='x', messages=Q, max_tokens=8)
        assert ok.choices[0].message.content is not None
        assert httpx.get(f'{srv.url}/health', timeout=10).status_code == 200  # liveness needs no key
    assert KEY not in caplog.text

@pytest.mark.parametrize('body,param', [
    ({'messages': []}, 'messages'),
    ({'messages': [{'role': 'robot', 'content': '안녕'}]}, 'messages[0].role'),
    ({'messages': Q + [{'role': 'assistant', 'content': '네'}]}, 'messages[1].role'),
    ({'messages': [{'role': 'user', 'content': '   '}]}, 'messages[0].content'),
    ({'messages': Q, 'max_tokens': 0}, 'max_tokens'),
    ({'messages': Q, 'max_tokens': 1_000_000}, 'max_tokens'),
    ({'messages': [{'role': 'user', 'content': '겐트 ' * 4000}]}, 'messages'),
    ({'messages': Q, 'n': 3}, 'n'),
    ({'messages': Q, 'response_format': {'type': 'json_object'}}, 'response_format'),
    ({'messages': Q, 'temperature': 9}, 'temperature'),
    ({'model': 'x'}, 'messages'),
])
def test_invalid_requests_get_a_clear_422(serve, body, param):
    with serve() as (srv, engine):
        r = httpx.post(f'{srv.base_url}/chat/completions', json=body, timeout=30)
        assert r.status_code == 422, r.text
        err = r.json()['error']
        assert err['param'] == param and err['message'] and err['type'] == 'invalid_request_error'
        assert engine.in_system == 0

def test_invalid_body_and_long_prompt_code(serve):
    with serve() as (srv, _):
        r = httpx.post(f'{srv.base_url}/chat/completions', content=b'{not json', headers={'Content-Type': 'application/json'}, timeout=30)
        assert r.status_code == 422
        r = httpx.post(f'{srv.base_url}/chat/completions', json={'messages': [{'role': 'user', 'content': '겐트 ' * 4000}]}, timeout=30)
        assert r.json()['error']['code'] == 'context_length_exceeded'
        with pytest.raises(openai.UnprocessableEntityError, match='max_tokens'):
            _client(srv).chat.completions.create(model='x', messages=Q, max_tokens=100_000)

def _post(url, timeout=120.0):
    try:
        r = httpx.post(url, json={'messages': Q, 'max_tokens': 16}, timeout=timeout)
        return r.status_code, r.headers.get('retry-after')
    except httpx.HTTPError as e: return type(e).__name__, None

def _wait(cond, limit=60.0):
    deadline = time.monotonic() + limit
    while not cond():
        if time.monotonic() > deadline: raise AssertionError('condition not reached in time')
        time.sleep(0.02)

def test_full_queue_answers_503_with_retry_after(serve):
    N, Q_SIZE, W = 7, 2, 1
    with serve(queue_size=Q_SIZE, workers=W, retry_after_s=3) as (srv, engine):
        with concurrent.futures.ThreadPoolExecutor(N) as ex:
            with engine.paused():  # the workers start nothing: the queue fills
                futs = [ex.submit(_post, f'{srv.base_url}/chat/completions') for _ in range(N)]
                _wait(lambda: engine.rejected == N - (Q_SIZE + W) and engine.in_system == Q_SIZE + W)
                assert httpx.get(f'{srv.url}/health', timeout=10).json()['in_system'] == Q_SIZE + W  # the loop still answers
                _wait(lambda: sum(f.done() for f in futs) == N - (Q_SIZE + W))
                assert [f.result() for f in futs if f.done()] == [(503, '3')] * (N - Q_SIZE - W)  # refused at once
            results = [f.result(timeout=300) for f in futs]
        assert results.count((200, None)) == Q_SIZE + W and results.count((503, '3')) == N - Q_SIZE - W
        _wait(lambda: engine.in_system == 0)

def test_burst_at_least_queue_plus_workers_succeed_none_hang(serve):
    N, Q_SIZE, W = 8, 2, 1
    with serve(queue_size=Q_SIZE, workers=W) as (srv, engine):
        with concurrent.futures.ThreadPoolExecutor(N) as ex:
            results = list(ex.map(lambda _: _post(f'{srv.base_url}/chat/completions'), range(N), timeout=600))
        ok, busy = results.count((200, None)), [r for r in results if r[0] == 503]
        assert ok >= min(N, Q_SIZE + W) and ok + len(busy) == N, results
        assert all(ra == str(ServeConfig().retry_after_s) for _, ra in busy)
        _wait(lambda: engine.in_system == 0)

def test_503_through_the_openai_client(serve):
    with serve(queue_size=0, workers=1) as (srv, engine):
        with concurrent.futures.ThreadPoolExecutor(1) as ex:
            with engine.paused():
                first = ex.submit(_post, f'{srv.base_url}/chat/completions')
                _wait(lambda: engine.in_system == 1)
                with pytest.raises(openai.APIStatusError) as e: _client(srv).chat.completions.create(model='x', messages=Q)
                assert e.value.status_code == 503 and e.value.response.headers['retry-after'] == '2'
            assert first.result(timeout=300)[0] == 200

def test_streaming_client_that_leaves_frees_its_place(serve):
    with serve() as (srv, engine):
        with httpx.stream('POST', f'{srv.base_url}/chat/completions', timeout=120,
                          json={'messages': Q, 'max_tokens': 256, 'stream': True}) as r:
            first = next(r.iter_lines())
            assert first.startswith('data: ') and 'sources' in first
        _wait(lambda: engine.in_system == 0, 300)
        assert httpx.get(f'{srv.url}/health', timeout=10).json()['status'] == 'ok'

def test_hateful_message_gets_the_polite_redirect(serve):
    with serve() as (srv, engine):
        res = httpx.post(f'{srv.url}/query', json={'query': '너 진짜 멍청하구나. 쓸모없는 고철 덩어리야.'}, timeout=30).json()
        assert res == {'response': GUARD_REPLY, 'sources': []}
        pieces = [ch.choices[0].delta.content for ch in _client(srv).chat.completions.create(
            model='x', messages=[{'role': 'user', 'content': '카르텔 놈들 같은 족속은 씨를 말려야 해.'}], stream=True)
            if ch.choices and ch.choices[0].delta.content]
        assert ''.join(pieces) == GUARD_REPLY
        assert engine.served == 0  # the model was not asked
    assert is_hateful('저 유저 신상 털어 버릴 거야') and not is_hateful('안톤의 본모습은 벌레를 닮았나요?')

def test_serves_a_merged_model_like_the_adapter(chat_model, tmp_path, serve, retriever):
    model, tok = chat_model
    ask = lambda srv: _client(srv).chat.completions.create(model='x', messages=Q, max_tokens=24, extra_body={'retrieval': False})
    with serve() as (srv, _): want = ask(srv).choices[0].message.content
    import copy
    merged = copy.deepcopy(model).merge_and_unload()
    merged.save_pretrained(tmp_path/'merged'); tok.save_pretrained(tmp_path/'merged')
    m2, t2 = load_model_dir(tmp_path/'merged', Run(get_preset('test')))
    assert not hasattr(m2, 'peft_config')
    engine = Engine(m2, t2, retriever, ServeConfig(fit_tokens=get_preset('test').sft.max_len))
    with BackgroundServer(make_app(engine, api_key='')) as srv: got = ask(srv).choices[0].message.content
    assert got == want

def test_dataset_generator_points_its_base_url_at_this_server(serve, tmp_path, monkeypatch):
    from dnf_rlhf.datagen import GenConfig, Generator, Job, QA, read_log
    monkeypatch.setenv('DNF_RLHF_E2E_KEY', KEY)
    questions = ['머크우드는 어떤 곳인가요?', '겐트 종류가 궁금해요.', '바칼의 본모습은 무엇인가요?']
    jobs = [Job(f'qa:{i}', 'qa', [{'role': 'user', 'content': q}], QA, {}, 32) for i, q in enumerate(questions)]
    with serve(api_key=KEY) as (srv, engine):
        cfg = GenConfig(model='dnf-rlhf', base_url=srv.base_url, api_key_env='DNF_RLHF_E2E_KEY', concurrency=2,
                        max_tokens=32, max_invalid=1, timeout=120, max_retries=1, cache_dir=str(tmp_path/'cache'))
        gen = Generator(tmp_path/'gen', cfg, progress=False)
        st = gen.run(jobs)
        served = engine.served
    assert gen.json_mode == 'none'  # the server refused response_format; the generator fell back to plain prompts
    assert st.ok + st.rejected == len(jobs) and st.failed == 0 and not st.stopped
    ledger = read_log(gen.ledger_path)
    assert len(ledger) == st.calls == served and all(not e['estimated'] and e['prompt_tokens'] > 0 for e in ledger)
    for r in gen.rejects(): assert r['reason'] and r['attempts'] == 2  # the tiny model does not write JSON: rejected, with the reason
    assert KEY not in (tmp_path/'gen'/'config.json').read_text()

def _free_port() -> int:
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); return s.getsockname()[1]

def test_serve_command(test_env, tmp_path):
    port = _free_port()
    env = dict(test_env, DNF_RLHF_API_KEY=KEY, DNF_RLHF_CACHE=str(cache_root()))  # the cached SFT model, not a fresh build
    code = 'import sys; from dnf_rlhf.serve import serve_main; sys.exit(serve_main(sys.argv[1:]))'
    p = subprocess.Popen([sys.executable, '-c', code, '--preset', 'tiny', '--port', str(port), '--index', str(tmp_path/'ix')],
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 600
        while True:
            assert p.poll() is None, p.stdout.read()[-3000:]
            try:
                if httpx.get(f'http://127.0.0.1:{port}/health', timeout=5).status_code == 200: break
            except httpx.HTTPError: pass
            assert time.monotonic() < deadline, 'server did not come up'
            time.sleep(0.5)
        c = openai.OpenAI(base_url=f'http://127.0.0.1:{port}/v1', api_key=KEY, max_retries=0, timeout=120)
        r = c.chat.completions.create(model='dnf-rlhf', messages=Q, max_tokens=16)
        assert r.sources and r.choices[0].message.content is not None
        assert load_json(tmp_path/'ix'/'index.json')['chunks'] > 0  # the index was built where asked
    finally:
        p.terminate()
        try: out = p.communicate(timeout=60)[0]
        except subprocess.TimeoutExpired: p.kill(); out = p.communicate()[0]
    assert KEY not in out  # the key is never logged
