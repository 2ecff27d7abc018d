"""The chat server on 127.0.0.1: the real `openai` client (JSON and SSE), /query, auth, validation, the bounded queue,
the input guard, merged models, the CLI, shutdown, a property test against its own OpenAPI schema, and the dataset
generator pointed at this server."""
import concurrent.futures, http.client, json, os, signal, socket, subprocess, sys, threading, time
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
    with serve(queue_size=3, batch_size=1) as (srv, _):
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
def test_invalid_requests_get_a_clear_400(serve, body, param):
    with serve() as (srv, engine):
        r = httpx.post(f'{srv.base_url}/chat/completions', json=body, timeout=30)
        assert r.status_code == 400, r.text  # OpenAI answers invalid bodies with 400
        err = r.json()['error']
        assert err['param'] == param and err['message'] and err['type'] == 'invalid_request_error'
        assert engine.in_system == 0

def test_invalid_body_and_long_prompt_code(serve):
    with serve() as (srv, _):
        r = httpx.post(f'{srv.base_url}/chat/completions', content=b'{not json', headers={'Content-Type': 'application/json'}, timeout=30)
        assert r.status_code == 400 and set(r.json()['error']) == {'message', 'type', 'param', 'code'}
        r = httpx.post(f'{srv.base_url}/chat/completions', json={'messages': [{'role': 'user', 'content': '겐트 ' * 4000}]}, timeout=30)
        assert r.json()['error']['code'] == 'context_length_exceeded'
        with pytest.raises(openai.BadRequestError, match='max_tokens'):
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
    with serve(queue_size=Q_SIZE, batch_size=W, retry_after_s=3) as (srv, engine):
        with concurrent.futures.ThreadPoolExecutor(N) as ex:
            with engine.paused():  # nothing joins the batch: the queue fills
                futs = [ex.submit(_post, f'{srv.base_url}/chat/completions') for _ in range(N)]
                _wait(lambda: engine.rejected == N - (Q_SIZE + W) and engine.in_system == Q_SIZE + W)
                assert httpx.get(f'{srv.url}/health', timeout=10).json()['in_system'] == Q_SIZE + W  # the loop still answers
                _wait(lambda: sum(f.done() for f in futs) == N - (Q_SIZE + W))
                assert [f.result() for f in futs if f.done()] == [(503, '3')] * (N - Q_SIZE - W)  # refused at once
            results = [f.result(timeout=300) for f in futs]
        assert results.count((200, None)) == Q_SIZE + W and results.count((503, '3')) == N - Q_SIZE - W
        _wait(lambda: engine.in_system == 0)

def test_burst_at_least_queue_plus_batch_succeed_none_hang(serve):
    N, Q_SIZE, W = 8, 2, 1
    with serve(queue_size=Q_SIZE, batch_size=W) as (srv, engine):
        with concurrent.futures.ThreadPoolExecutor(N) as ex:
            results = list(ex.map(lambda _: _post(f'{srv.base_url}/chat/completions'), range(N), timeout=600))
        ok, busy = results.count((200, None)), [r for r in results if r[0] == 503]
        assert ok >= min(N, Q_SIZE + W) and ok + len(busy) == N, results
        assert all(ra == str(ServeConfig().retry_after_s) for _, ra in busy)
        _wait(lambda: engine.in_system == 0)

def test_503_through_the_openai_client(serve):
    with serve(queue_size=0, batch_size=1) as (srv, engine):
        with concurrent.futures.ThreadPoolExecutor(1) as ex:
            with engine.paused():
                first = ex.submit(_post, f'{srv.base_url}/chat/completions')
                _wait(lambda: engine.in_system == 1)
                with pytest.raises(openai.APIStatusError) as e: _client(srv).chat.completions.create(model='x', messages=Q)
                assert e.value.status_code == 503 and e.value.response.headers['retry-after'] == '2'
            assert first.result(timeout=300)[0] == 200

QUESTIONS = ['바칼의 본모습은 무엇인가요?', '머크우드는 어떤 곳인가요?', '카잔은 누구인가요?', '겐트는 어떤 곳인가요?',
             '힐더는 누구인가요?', '시로코는 누구인가요?']

def _together(srv, engine, bodies:list[dict]) -> list[dict]:
    "Send `bodies` at once while the engine is paused, so that all of them join one batch; their JSON answers."
    with concurrent.futures.ThreadPoolExecutor(len(bodies)) as ex:
        with engine.paused():
            futs = [ex.submit(lambda b: httpx.post(f'{srv.base_url}/chat/completions', json=b, timeout=300), b) for b in bodies]
            _wait(lambda: len(engine._waiting) == len(bodies))  # all admitted and encoded, none generating
        return [f.result().json() for f in futs]

def test_greedy_answers_are_the_same_batched_or_alone(serve):
    bodies = [{'messages': [{'role': 'user', 'content': q}], 'max_tokens': 24} for q in QUESTIONS]
    with serve(batch_size=8) as (srv, engine):
        alone = [httpx.post(f'{srv.base_url}/chat/completions', json=b, timeout=300).json() for b in bodies]
        assert engine.peak_batch == 1
        together = _together(srv, engine, bodies)
        assert engine.peak_batch == len(bodies)  # one batch of six rows of different prompt lengths
        with concurrent.futures.ThreadPoolExecutor(len(bodies)) as ex:  # clients that come and go: rows join mid-answer
            rounds = list(ex.map(lambda k: [httpx.post(f'{srv.base_url}/chat/completions', json=bodies[(k + i) % len(bodies)],
                                                       timeout=300).json() for i in range(len(bodies))], range(len(bodies))))
    assert len({a['usage']['prompt_tokens'] for a in alone}) > 1
    assert [t['choices'][0]['message']['content'] for t in together] == [a['choices'][0]['message']['content'] for a in alone]
    assert [t['usage'] for t in together] == [a['usage'] for a in alone]
    for k, answers in enumerate(rounds):
        assert [r['choices'][0]['message']['content'] for r in answers] == \
               [alone[(k + i) % len(bodies)]['choices'][0]['message']['content'] for i in range(len(bodies))]

def test_a_seed_repeats_its_sampled_answer_whatever_shares_the_batch(serve):
    seeded = {'messages': Q, 'max_tokens': 24, 'temperature': 1.0, 'seed': 1234}
    others = [{'messages': [{'role': 'user', 'content': q}], 'max_tokens': 24, 'temperature': 1.0} for q in QUESTIONS[1:4]]
    with serve(batch_size=8) as (srv, engine):
        alone = httpx.post(f'{srv.base_url}/chat/completions', json=seeded, timeout=300).json()
        batched = _together(srv, engine, others + [seeded])[-1]
        assert engine.peak_batch == 4
    assert batched['choices'][0]['message']['content'] == alone['choices'][0]['message']['content']

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

def test_serves_a_merged_model_like_the_adapter(chat_model, tmp_path, retriever):
    model, tok = chat_model  # load_chat_model merged the SFT adapter into the base (for_serving)
    assert not hasattr(model, 'peft_config')
    run = Run(get_preset('test'))
    adapter, t1 = load_model_dir(run.artifact('sft')/'adapter', run)
    assert hasattr(adapter, 'peft_config')  # the adapter as trained, not merged
    model.save_pretrained(tmp_path/'merged'); tok.save_pretrained(tmp_path/'merged')
    folder, t2 = load_model_dir(tmp_path/'merged', run)
    answers = []
    for m, t in ((adapter, t1), (model, tok), (folder, t2)):
        engine = Engine(m, t, retriever, ServeConfig(fit_tokens=get_preset('test').sft.max_len))
        with BackgroundServer(make_app(engine, api_key='')) as srv:
            answers.append([_client(srv).chat.completions.create(model='x', messages=[{'role': 'user', 'content': q}], max_tokens=24)
                            .choices[0].message.content for q in QUESTIONS[:3]])
    assert answers[0] == answers[1] == answers[2]

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

# --- issue #23: serving defects -------------------------------------------------------------------------------------

def _openai_error(r) -> dict:
    "The `error` object of an OpenAI-shaped error response (asserting the shape)."
    body = json.loads(r.read() if hasattr(r, 'read') else r.content)
    assert set(body) == {'error'} and set(body['error']) == {'message', 'type', 'param', 'code'}, body
    assert isinstance(body['error']['message'], str) and body['error']['message']
    return body['error']

def _raw_post(conn:http.client.HTTPConnection, path:str, body:bytes|str, headers:dict|None=None):
    "POST `body` on the (kept-alive) connection `conn`; the response, read."
    conn.request('POST', path, body=body.encode() if isinstance(body, str) else body,
                 headers={'Content-Type': 'application/json', **(headers or {})})
    r = conn.getresponse(); r.data = r.read(); return r

VALID = json.dumps({'messages': Q, 'max_tokens': 4, 'retrieval': False})

@pytest.mark.parametrize('path,body', [
    ('/v1/chat/completions', {'messages': [{'role': 'user', 'content': [{'type': 'text', 'text': 5}]}]}),
    ('/v1/chat/completions', {'messages': [{'role': 'user', 'content': [{'type': 'text', 'text': None}]}]}),
    ('/v1/chat/completions', {'messages': [{'role': 'user', 'content': [{'type': 'text', 'text': ['a', 'b']}]}]}),
    ('/v1/chat/completions', '{"messages": [{"role": "user", "content": "\\ud800"}]}'),  # a lone surrogate
    ('/v1/chat/completions', '{"messages": [{"role": "user", "content": [{"type": "text", "text": "a\\udfff"}]}]}'),
    ('/query', '{"query": "\\ud800 머크우드?"}'),
    ('/v1/chat/completions', {'messages': Q, 'seed': 2**64}),
    ('/v1/chat/completions', {'messages': Q, 'seed': 2**64, 'stream': True}),  # was: 200, then an error event
])
def test_bad_input_is_a_400_and_the_connection_stays_usable(serve, path, body):
    with serve() as (srv, engine):
        conn = http.client.HTTPConnection('127.0.0.1', srv.port, timeout=60)
        try:
            r = _raw_post(conn, path, body if isinstance(body, str) else json.dumps(body))
            assert r.status == 400, (r.status, r.data[:300])
            err = json.loads(r.data)['error']
            assert set(err) == {'message', 'type', 'param', 'code'} and err['type'] == 'invalid_request_error'
            assert (r.getheader('connection') or '').lower() != 'close'
            sock = conn.sock
            ok = _raw_post(conn, '/v1/chat/completions', VALID)  # the next request on the same connection is served
            assert ok.status == 200 and json.loads(ok.data)['choices'][0]['message']['content'] is not None
            assert conn.sock is sock  # no reconnect happened
        finally: conn.close()
        _wait(lambda: engine.in_system == 0)  # the worker frees the place right after its last event

@pytest.mark.parametrize('body,param', [
    ({'messages': Q, 'max_tokens': '8'}, 'max_tokens'),
    ({'messages': Q, 'max_tokens': True}, 'max_tokens'),
    ({'messages': Q, 'max_tokens': 8.0}, 'max_tokens'),
    ({'messages': Q, 'stream': 'yes'}, 'stream'),
    ({'messages': Q, 'retrieval': 0}, 'retrieval'),
    ({'messages': Q, 'n': '1'}, 'n'),
    ({'messages': Q, 'temperature': '0.5'}, 'temperature'),
    ({'messages': [{'role': 'user', 'content': 5}]}, 'messages[0].content'),
    ({'messages': Q, 'stream_options': {'include_usage': 'yes'}}, 'stream_options.include_usage'),
])
def test_loose_values_are_refused(serve, body, param):
    with serve() as (srv, engine):
        r = httpx.post(f'{srv.base_url}/chat/completions', json=body, timeout=30)
        assert r.status_code == 400, r.text
        err = _openai_error(r)
        assert err['param'] == param and err['type'] == 'invalid_request_error', err
        q = httpx.post(f'{srv.url}/query', json={'query': '겐트?', 'retrieval': 0}, timeout=30)
        assert q.status_code == 400 and _openai_error(q)['param'] == 'retrieval'
        assert engine.in_system == 0 and engine.served == 0

def test_openapi_documents_the_openai_shaped_400(serve):
    with serve() as (srv, _):
        spec = httpx.get(f'{srv.url}/openapi.json', timeout=10).json()
    schemas = spec['components']['schemas']
    def resolve(s): return schemas[s['$ref'].rsplit('/', 1)[1]] if '$ref' in s else s
    for path in ('/v1/chat/completions', '/query'):
        responses = spec['paths'][path]['post']['responses']
        assert '422' not in responses and {'400', '401', '413', '503'} <= set(responses), sorted(responses)
        err = resolve(responses['400']['content']['application/json']['schema'])
        inner = resolve(err['properties']['error'])
        assert set(inner['properties']) == {'message', 'type', 'param', 'code'}
    req = resolve(spec['paths']['/v1/chat/completions']['post']['requestBody']['content']['application/json']['schema'])
    assert req['properties']['messages']['minItems'] == 1  # `messages: []` is refused by the schema itself
    assert 'HTTPValidationError' not in schemas

def test_validation_detail_needs_the_key(serve):
    with serve(api_key=KEY) as (srv, engine):
        url = f'{srv.base_url}/chat/completions'
        for content, headers in ((b'{not json', {}), (json.dumps({'messages': [], 'max_tokens': 'x'}).encode(), {}),
                                 (b'{"messages": []}', {'Authorization': 'Bearer wrong'})):
            r = httpx.post(url, content=content, headers={'Content-Type': 'application/json', **headers}, timeout=30)
            assert r.status_code == 401, r.text  # the key is checked before the body is parsed
            err = _openai_error(r)
            assert err['code'] == 'invalid_api_key' and 'max_tokens' not in r.text and 'messages' not in r.text
        r = httpx.post(url, json={'messages': [], 'max_tokens': 'x'}, headers={'Authorization': f'Bearer {KEY}'}, timeout=30)
        assert r.status_code == 400 and _openai_error(r)['param'] in ('messages', 'max_tokens')

def test_oversized_body_is_a_413_before_it_is_read(serve):
    with serve(api_key=KEY) as (srv, engine):
        url, auth = f'{srv.base_url}/chat/completions', {'Authorization': f'Bearer {KEY}'}
        body = json.dumps({'messages': [{'role': 'user', 'content': '겐트'}] * 100_000}).encode()  # 100k messages
        assert len(body) > engine.cfg.max_body_bytes
        r = httpx.post(url, content=body, headers={'Content-Type': 'application/json', **auth}, timeout=60)
        assert r.status_code == 413, r.text[:300]
        err = _openai_error(r)
        assert err['code'] == 'request_too_large' and str(engine.cfg.max_body_bytes) in err['message']
        r = httpx.post(url, content=body, headers={'Content-Type': 'application/json'}, timeout=60)
        assert r.status_code == 401  # without a key: refused before the size is looked at
        def chunked():  # no Content-Length: the limit holds while the body streams in
            for i in range(0, len(body), 65536): yield body[i:i + 65536]
        r = httpx.post(url, content=chunked(), headers={'Content-Type': 'application/json', **auth}, timeout=60)
        assert r.status_code == 413 and _openai_error(r)['code'] == 'request_too_large'
        assert httpx.get(f'{srv.url}/health', timeout=10).json()['in_system'] == 0

class _GatedTokenizer:
    "The real tokenizer; once armed, its next call waits until the test opens the gate (shows where it runs)."
    def __init__(self, tok): self._tok, self.armed, self.entered, self.gate = tok, False, threading.Event(), threading.Event()
    def __getattr__(self, name): return getattr(self._tok, name)
    def __call__(self, *a, **kw):
        if self.armed and not self.gate.is_set():
            self.entered.set()
            assert self.gate.wait(60), 'gate never opened'
        return self._tok(*a, **kw)

def test_prompt_tokenisation_runs_off_the_event_loop(chat_model, retriever):
    model, tok = chat_model
    gated = _GatedTokenizer(tok)
    engine = Engine(model, gated, retriever, ServeConfig(fit_tokens=get_preset('test').sft.max_len, max_tokens_default=4))
    with BackgroundServer(make_app(engine, api_key='')) as srv, concurrent.futures.ThreadPoolExecutor(1) as ex:
        gated.armed = True
        try:
            fut = ex.submit(_post, f'{srv.base_url}/chat/completions')
            assert gated.entered.wait(60)  # the request is being tokenised (and waits at the gate)
            h = httpx.get(f'{srv.url}/health', timeout=10)  # the event loop still answers meanwhile
            assert h.status_code == 200
        finally: gated.gate.set()
        assert fut.result(timeout=120)[0] == 200

def test_non_streaming_client_that_times_out_frees_its_place(serve):
    with serve(queue_size=0, batch_size=1) as (srv, engine):
        url = f'{srv.base_url}/chat/completions'
        with engine.paused():  # nothing joins the batch: the request waits while its client gives up
            with pytest.raises(httpx.TimeoutException):
                httpx.post(url, json={'messages': Q, 'max_tokens': 16}, timeout=1.0)
            _wait(lambda: engine.in_system == 0, 30)  # the server saw the client leave and dropped the job
        r = httpx.post(url, json={'messages': Q, 'max_tokens': 8}, timeout=120)
        assert r.status_code == 200, r.text  # served at once, not 503: the place was free
        _wait(lambda: engine.in_system == 0 and engine.served >= 1)  # counted right after its last event
        assert engine.served == 1  # only the second request was generated

def test_long_max_tokens_keeps_the_retrieved_passages(serve):
    q = [{'role': 'user', 'content': '머크우드는 어떤 곳인가요?'}]
    with serve(max_tokens_limit=1024) as (srv, engine):
        c = _client(srv)
        short = c.chat.completions.create(model='x', messages=q, max_tokens=16)
        long = c.chat.completions.create(model='x', messages=q, max_tokens=400)
        assert short.sources and long.sources  # was []: a long answer budget left no room for passages
        job, _ = prepare_job(engine, ChatRequest(messages=q, max_tokens=1))
        from dnf_rlhf.chat import render_prompt
        room = engine.context_limit - n_tokens(engine.tok, render_prompt(engine.tok, job.messages))
        r = c.chat.completions.create(model='x', messages=q, max_tokens=room)  # fits without passages only
        assert r.sources  # the passages are kept ...
        assert r.max_tokens < room  # ... and the answer budget shrinks, which the response says
        assert r.usage.prompt_tokens + r.max_tokens <= engine.context_limit and r.usage.completion_tokens <= r.max_tokens

SERVE_CODE = 'import sys; from dnf_rlhf.cli import main; sys.exit(main(["serve", *sys.argv[1:]]))'  # `dnf-rlhf serve`

def test_serve_run_must_name_a_folder(test_env, tmp_path):
    (tmp_path/'a-file').write_text('x')
    for bad in (tmp_path/'missing', tmp_path/'a-file'):
        p = subprocess.run([sys.executable, '-c', SERVE_CODE, '--preset', 'tiny', '--port', str(_free_port()), '--run', str(bad)],
                           env=test_env, capture_output=True, text=True, timeout=60)
        assert p.returncode == 2, (p.returncode, p.stderr[-1500:])
        lines = p.stderr.strip().splitlines()
        assert len(lines) == 1 and str(bad) in lines[0], p.stderr
    p = subprocess.run([sys.executable, '-c', SERVE_CODE, '--preset', 'tiny', '--model', str(tmp_path/'missing')],
                       env=test_env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and str(tmp_path/'missing') in p.stderr

def test_serve_help_names_the_api_key_variable(capsys):
    with pytest.raises(SystemExit) as e: serve_main(['--help'])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert ServeConfig().api_key_env in out and '--grace' in out

def _slow_body(port:int) -> socket.socket:
    "A request whose body never finishes arriving: in flight until the server gives up on it."
    s = socket.create_connection(('127.0.0.1', port), timeout=30)
    s.sendall(f'POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n'
              f'Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{"messages": '.encode())
    return s

def test_sigterm_stops_within_the_grace_period(test_env, tmp_path):
    port, grace = _free_port(), 10.0  # ServeConfig.shutdown_grace_s, the default grace period
    env = dict(test_env, DNF_RLHF_API_KEY=KEY, DNF_RLHF_CACHE=str(cache_root()))
    log = open(tmp_path/'serve.log', 'w+')
    p = subprocess.Popen([sys.executable, '-c', SERVE_CODE, '--preset', 'tiny', '--port', str(port), '--no-retrieval'],
                         env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
    socks, ex = [], concurrent.futures.ThreadPoolExecutor(2)
    try:
        deadline = time.monotonic() + 600
        while True:
            assert p.poll() is None, (tmp_path/'serve.log').read_text()[-3000:]
            try:
                if httpx.get(f'http://127.0.0.1:{port}/health', timeout=5).status_code == 200: break
            except httpx.HTTPError: pass
            assert time.monotonic() < deadline, 'server did not come up'
            time.sleep(0.5)
        socks = [_slow_body(port) for _ in range(2)]  # two requests still uploading ...
        def stream():  # ... and two generating
            try:
                with httpx.stream('POST', f'http://127.0.0.1:{port}/v1/chat/completions', timeout=60,
                                  headers={'Authorization': f'Bearer {KEY}'},
                                  json={'messages': Q, 'max_tokens': 500, 'stream': True}) as r:
                    for _ in r.iter_lines(): pass
            except httpx.HTTPError: pass
        futs = [ex.submit(stream) for _ in range(2)]
        time.sleep(0.5)  # let the requests arrive (not a timing assertion: in flight or not, the exit must come)
        t0 = time.monotonic()
        p.send_signal(signal.SIGTERM)
        try: rc = p.wait(timeout=grace + 30)
        except subprocess.TimeoutExpired: rc = None
        assert rc is not None, f'still running {time.monotonic() - t0:.0f} s after SIGTERM (grace {grace} s)'
        assert rc in (0, -signal.SIGTERM), rc
    finally:
        for s in socks: s.close()
        if p.poll() is None: p.kill(); p.wait(30)
        ex.shutdown(wait=True, cancel_futures=True)
        log.close()
    assert KEY not in (tmp_path/'serve.log').read_text()

def _inline(schema, components:dict):
    "`schema` with every local `$ref` replaced by the component it names (the server's schemas are not recursive)."
    if isinstance(schema, dict):
        if '$ref' in schema: return _inline(components[schema['$ref'].rsplit('/', 1)[1]], components)
        return {k: _inline(v, components) for k, v in schema.items()}
    if isinstance(schema, list): return [_inline(v, components) for v in schema]
    return schema

def _strategy(schema:dict, anything):
    "A hypothesis strategy for the JSON values that `schema` allows: the subset pydantic writes, `$ref`s inlined."
    from hypothesis import strategies as st
    if 'anyOf' in schema: return st.one_of([_strategy(s, anything) for s in schema['anyOf']])
    if 'const' in schema: return st.just(schema['const'])
    if 'enum' in schema: return st.sampled_from(schema['enum'])
    t = schema.get('type')
    if t == 'object':
        props, required = schema.get('properties', {}), set(schema.get('required', []))
        return st.fixed_dictionaries({k: _strategy(v, anything) for k, v in props.items() if k in required},
                                     optional={k: _strategy(v, anything) for k, v in props.items() if k not in required})
    if t == 'array':
        lo = schema.get('minItems', 0)
        return st.lists(_strategy(schema.get('items', {}), anything), min_size=lo, max_size=schema.get('maxItems', lo + 3))
    if t == 'string': return st.text(min_size=schema.get('minLength', 0), max_size=schema.get('maxLength', 40))
    if t == 'integer': return st.integers(schema.get('minimum'), schema.get('maximum'))
    if t == 'number':
        return st.floats(schema.get('minimum', schema.get('exclusiveMinimum')), schema.get('maximum', schema.get('exclusiveMaximum')),
                         exclude_min='exclusiveMinimum' in schema, exclude_max='exclusiveMaximum' in schema,
                         allow_nan=False, allow_infinity=False)
    if t == 'boolean': return st.booleans()
    if t == 'null': return st.none()
    assert not set(schema) & {'type', 'allOf', 'oneOf', 'not', 'if', 'pattern', 'format'}, schema  # nothing silently widened
    return anything

def test_property_schema_bodies_get_no_500_and_documented_responses(serve):
    "Bodies generated from the server's own OpenAPI schema (and broken variants of them): no 500, every answer documented."
    from hypothesis import HealthCheck, given, settings, strategies as st
    import jsonschema
    with serve(api_key=KEY, max_tokens_limit=8, max_tokens_default=4) as (srv, engine):
        spec = httpx.get(f'{srv.url}/openapi.json', timeout=10).json()
        comps = spec['components']['schemas']
        ops = {path: spec['paths'][path]['post'] for path in ('/v1/chat/completions', '/query')}
        json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
                                   lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3),
                                   max_leaves=6)
        def bodies(op):
            schema = _inline(op['requestBody']['content']['application/json']['schema'], comps)
            valid = _strategy(schema, json_values)
            broken = st.tuples(valid, st.sampled_from(sorted(schema['properties'])), json_values).map(lambda t: {**t[0], t[1]: t[2]})
            return st.one_of(valid, valid, broken, json_values)
        seen, client = {}, httpx.Client(timeout=60, headers={'Authorization': f'Bearer {KEY}'})
        for path in ops:  # non-standard JSON that Python's parsers accept (`Infinity`, `NaN`): a 400, never a 500
            for raw in ('Infinity', '{"query": Infinity}', '{"messages": [{"role": "user", "content": "hi"}], "temperature": NaN}'):
                r = client.post(f'{srv.url}{path}', content=raw, headers={'Content-Type': 'application/json'})
                assert r.status_code == 400 and r.json()['error']['type'], (path, raw, r.status_code, r.text[:300])

        @settings(max_examples=300, deadline=None, derandomize=True, database=None, print_blob=True,
                  suppress_health_check=list(HealthCheck))
        @given(st.sampled_from(sorted(ops)).flatmap(lambda path: st.tuples(st.just(path), bodies(ops[path]))))
        def check(case):
            path, body = case
            # json.dumps writes inf as `Infinity`, which Python's parsers accept and JSON does not: sent as it is
            r = client.post(f'{srv.url}{path}', content=json.dumps(body), headers={'Content-Type': 'application/json'})
            seen[r.status_code] = seen.get(r.status_code, 0) + 1
            assert r.status_code < 500, (path, body, r.status_code, r.text[:500])
            doc = ops[path]['responses'].get(str(r.status_code))
            assert doc is not None, (path, body, r.status_code, 'undocumented status')
            kind = r.headers['content-type'].split(';')[0]
            assert kind in doc.get('content', {}), (path, body, kind, 'undocumented content type')
            if kind == 'application/json':
                jsonschema.Draft202012Validator(_inline(doc['content'][kind]['schema'], comps)).validate(r.json())
            else:  # a stream: JSON events, no error event, [DONE] last
                events = [ln[6:] for ln in r.text.splitlines() if ln.startswith('data: ')]
                assert events[-1] == '[DONE]' and not any(e.startswith('{"error"') for e in events), events[-3:]
                for e in events[:-1]: json.loads(e)

        check()
        client.close()
        assert seen.get(200, 0) >= 5 and seen.get(400, 0) >= 5, seen  # both answers and refusals were exercised
        _wait(lambda: engine.in_system == 0)
