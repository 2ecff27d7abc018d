"Retrieval: Kiwi + BM25, the tiny embedder, fusion, persistence in a fresh process, re-indexing, evaluation, CLI."
import json, multiprocessing, pickle, subprocess, sys
from dataclasses import replace
from pathlib import Path
import numpy as np
import pytest
from dnf_rlhf.core import get_preset, ProjectConfig
from dnf_rlhf.lore import Chunk, load_corpus, chunk_corpus
from dnf_rlhf.rag import *

QUERIES = ['머크우드는 어떤 곳인가요?', '바칼의 본모습은 무엇인가요?', '카잔 증후군은 왜 생겼나요?', '겐트 종류가 궁금해요.']

@pytest.fixture(scope='module')
def chunks(): return chunk_corpus(load_corpus())

@pytest.fixture(scope='module')
def hybrid(chunks): return build_retriever(chunks, questions=training_questions())  # tiny embedder: trained once, then cached

@pytest.fixture(scope='module')
def sparse_only(chunks): return build_retriever(chunks, IndexConfig(embedder=None))

def test_particle_question_finds_its_document_with_bm25_alone(sparse_only):
    test_toks = morphemes(['머크우드는', '머크우드의', '머크우드'])
    assert test_toks == [['머크우드']] * 3  # particles split off
    hits = sparse_only.search('머크우드는 어떤 곳인가요?', k=3, mode='bm25')
    assert hits[0].chunk.doc_id == 'region-murkwood'
    assert sparse_only.modes == ('bm25',)

def test_two_document_corpus_gives_non_zero_scores():
    idx = SparseIndex.build(morphemes(['머크우드는 타우 부족의 숲이다.', '겐트는 황도의 도시다.']))
    s = idx.scores(morphemes(['머크우드 숲'])[0])
    assert s[0] > 0 and s[1] == 0
    r = build_retriever([Chunk('a#0-5', 'a', 0, 5, '머크우드는 숲이다.', '머크우드', 'region'),
                         Chunk('b#0-5', 'b', 0, 5, '겐트는 도시다.', '겐트', 'region')], IndexConfig(embedder=None))
    hits = r.search('겐트는 어디인가요?', k=5)
    assert [h.chunk.doc_id for h in hits] == ['b'] and hits[0].score > 0

def test_save_then_reload_in_a_fresh_process_gives_identical_rankings(hybrid, tmp_path):
    hybrid.save(tmp_path/'index')
    here = {m: [[h.id for h in hits] for hits in hybrid.search_batch(QUERIES, k=5, mode=m)] for m in hybrid.modes}
    code = ("import json, sys; from dnf_rlhf.rag import load_retriever; r = load_retriever(sys.argv[1]); qs = json.loads(sys.argv[2]); "
            "print(json.dumps({'ranks': {m: [[h.id for h in hits] for hits in r.search_batch(qs, k=5, mode=m)] for m in r.modes}, "
            "'embedded': r.embedder.passages_encoded}))")
    p = subprocess.run([sys.executable, '-c', code, str(tmp_path/'index'), json.dumps(QUERIES)], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    there = json.loads(p.stdout.strip().splitlines()[-1])
    assert there['ranks'] == here
    assert there['embedded'] == 0  # vectors were read, not recomputed
    assert (tmp_path/'index'/'embedder'/'training.json').exists()  # the tiny embedder travels with the index

def _write_corpus(folder:Path, docs):
    folder.mkdir(parents=True, exist_ok=True)
    for d in docs:
        (folder/f'{d.id}.md').write_text(f"---\nid: {d.id}\ntitle: {d.title}\ncategory: {d.category}\nsource: test\n---\n\n{d.text}\n", encoding='utf-8')

def test_changed_corpus_is_detected_and_reindexed(tmp_path):
    docs = load_corpus()[:4]
    _write_corpus(tmp_path/'lore', docs)
    cfg = IndexConfig(embedder=None)
    read = lambda: chunk_corpus(load_corpus(tmp_path/'lore'))
    r1, built = open_index(tmp_path/'ix', read(), cfg)
    r2, rebuilt = open_index(tmp_path/'ix', read(), cfg)
    assert (built, rebuilt) == (True, False) and r1.corpus_hash == r2.corpus_hash
    assert not r2.search('크로노블라스트', k=1)
    _write_corpus(tmp_path/'lore', [replace(docs[1], text=docs[1].text + ' 숨겨진 크로노블라스트가 있다.')])
    r3, rebuilt = open_index(tmp_path/'ix', read(), cfg)
    assert rebuilt and r3.corpus_hash != r1.corpus_hash
    assert r3.search('크로노블라스트', k=1)[0].chunk.doc_id == docs[1].id
    r4, rebuilt = open_index(tmp_path/'ix', read(), replace(cfg, k1=1.2))  # a build setting changes the index too
    assert rebuilt
    r5, rebuilt = open_index(tmp_path/'ix', read(), replace(cfg, k1=1.2, top_k=9))  # a query setting does not
    assert not rebuilt and r5.cfg.top_k == 9

def _spawned_morphemes(texts): return morphemes(texts)

def test_kiwi_stays_out_of_the_index_and_works_in_a_spawned_process(hybrid):
    from kiwipiepy import Kiwi
    assert not any(isinstance(v, Kiwi) for v in vars(hybrid).values())
    with multiprocessing.get_context('spawn').Pool(1) as pool:
        child = pool.apply_async(_spawned_morphemes, (QUERIES,)).get(timeout=300)
    assert child == morphemes(QUERIES)

def test_acceptance_on_the_demo_questions(hybrid, chunks):
    test = load_questions(splits=('test',))
    rows = {(r['mode'], r['form']): r for r in evaluate_retrieval(hybrid, test)}
    assert rows[('bm25', 'particle')]['recall@5'] >= 0.90
    for form in ('plain', 'particle', 'paraphrase'): assert rows[('hybrid', form)]['recall@5'] >= 0.90, form
    for form in ('all', 'description', 'paraphrase'):  # the fusion is no worse than its better member
        assert rows[('hybrid', form)]['recall@5'] >= max(rows[('bm25', form)]['recall@5'], rows[('dense', form)]['recall@5']) - 0.02, form
    for r in rows.values(): assert 0 <= r['recall@1'] <= r['recall@5'] <= 1 and 0 <= r['mrr'] <= 1
    before = {r['form']: r for r in evaluate_retrieval(build_retriever(chunks), test, modes=('dense',))}  # inverse cloze only
    for form in ('description', 'paraphrase'):  # the training questions teach the dense retriever what people ask
        assert rows[('dense', form)]['recall@5'] > before[form]['recall@5'], form

def test_category_filter_and_clear_errors(hybrid):
    for mode in hybrid.modes:
        hits = hybrid.search('바칼', k=5, mode=mode, categories=['region', 'event'])
        assert hits and all(h.chunk.category in ('region', 'event') for h in hits)
    with pytest.raises(ValueError, match='unknown categories'): hybrid.search('바칼', categories=['weapons'])
    with pytest.raises(ValueError, match='not available'): hybrid.search('바칼', mode='splade')
    with pytest.raises(ValueError, match='fusion'): hybrid.search('바칼', fusion='max')
    with pytest.raises(ValueError, match='empty'): build_retriever([])

def test_weighted_fusion_is_an_option(hybrid):
    w = Retriever(hybrid.chunks, replace(hybrid.cfg, fusion='weighted', dense_weight=0.3), hybrid.sparse, hybrid.dense, hybrid.embedder)
    hits = w.search('머크우드는 어떤 곳인가요?', k=5)
    assert len(hits) == 5 and hits[0].score >= hits[-1].score and hits[0].chunk.doc_id == 'region-murkwood'

def test_tiny_embedder_is_deterministic_and_never_sees_a_test_question(tmp_path, chunks):
    few = [c for c in chunks if c.doc_id in {'region-murkwood', 'region-gent', 'apostle-bakal'}]
    cfg = EmbedderConfig(vocab_size=300, dim=32, epochs=1)
    m1, m2 = train_tiny_embedder(tmp_path/'a', few, cfg), train_tiny_embedder(tmp_path/'b', few, cfg)
    assert m1['embedder/pairs'] == m2['embedder/pairs'] == len(ict_pairs(few))
    v1, v2 = (Embedder(tmp_path/x).encode_passages(['머크우드 숲', '바칼']) for x in 'ab')
    np.testing.assert_array_equal(v1, v2)
    questions = {r.question for r in load_questions()}
    assert not questions & {q for q, _, _ in ict_pairs(chunks)}  # inverse cloze queries are corpus sentences
    fit, tune = fit_split(training_questions())
    assert fit and tune and not {r.question for r in load_questions(splits=('test',))} & {r.question for r in fit + tune}
    m = train_tiny_embedder(tmp_path/'c', few, cfg, question_pairs(fit, few))
    assert m['embedder/pairs'] == len(ict_pairs(few)) + cfg.question_repeats * m['embedder/questions'] > len(ict_pairs(few))

def test_context_fits_the_token_budget(hybrid):
    from dnf_rlhf.models import load_pretrained
    from dnf_rlhf.core import Run
    tok = load_pretrained(Run(get_preset('test')))[1]
    hits = hybrid.search('머크우드는 어떤 곳인가요?', k=3)
    full, ids = build_context(hits)
    assert ids == [h.id for h in hits]
    for budget in (40, 200, 10_000):
        text, ids = build_context(hits, tok, budget)
        assert len(tok(text, add_special_tokens=False)['input_ids']) <= budget
        assert ids == [h.id for h in hits][:len(ids)] and ids  # best first; the best one is cut rather than dropped
        assert full.startswith(text[:20])
    assert build_context(hits, tok, 0) == ('', [])
    q = '바칼은 흔히 어떤 칭호로 불리나요?'
    top = hybrid.search(q, k=1)
    window, ids = build_context(top, tok, 60, q)
    assert ids == [top[0].id] and window in top[0].chunk.text and len(tok(window, add_special_tokens=False)['input_ids']) <= 60
    assert best_window(top[0].chunk.text, q, tok, 10_000) == top[0].chunk.text

def test_bad_question_files_name_the_problem(tmp_path, chunks):
    with pytest.raises(FileNotFoundError, match='retrieval_train.jsonl'): load_questions(ProjectConfig(datasets_dir=str(tmp_path)))
    for s in ('train', 'test'): (tmp_path/f'retrieval_{s}.jsonl').write_text('{"question": "q", "answer": "a", "start": 0, "end": 1}\n', encoding='utf-8')
    with pytest.raises(ValueError, match='without doc_id'): load_questions(ProjectConfig(datasets_dir=str(tmp_path)))
    (tmp_path/'retrieval_test.jsonl').write_text('{"question": "q", "answer": "a", "start": -1, "end": 1}\n', encoding='utf-8')
    with pytest.raises(ValueError, match=r"retrieval_\w+.jsonl:1: field 'start'"): load_questions(ProjectConfig(datasets_dir=str(tmp_path)))

def test_index_command(tmp_path, test_env):
    code = 'import sys; from dnf_rlhf.rag import index_main; sys.exit(index_main(sys.argv[1:]))'
    run = lambda: subprocess.run([sys.executable, '-c', code, '--out', str(tmp_path/'ix'), '--no-dense', '--evaluate'],
                                 capture_output=True, text=True, env=test_env, timeout=300)
    first, second = run(), run()
    assert first.returncode == 0, first.stderr[-2000:]
    a, b = (json.loads(p.stdout.strip().splitlines()[-1]) for p in (first, second))
    assert (a['rebuilt'], b['rebuilt']) == (True, False) and a['modes'] == ['bm25']
    assert a['evaluation'][0]['mode'] == 'bm25' and a['evaluation'][0]['recall@5'] >= 0.8  # test split, misspelled and description-only included
    assert load_retriever(tmp_path/'ix').search('머크우드는 어떤 곳인가요?', k=1)[0].chunk.doc_id == 'region-murkwood'

def test_rag_stage_writes_index_metrics_and_manifest(tmp_path):
    from dnf_rlhf.core import stage_done, load_json
    from dnf_rlhf.core import Run, run_stage
    metrics = run_stage(Run(get_preset('test'), dir=tmp_path), 'rag')
    assert stage_done(tmp_path/'rag') and load_json(tmp_path/'rag'/'metrics.json') == metrics
    assert metrics['rag/hybrid_particle_recall@5'] >= 0.9 and metrics['rag/bm25_particle_recall@5'] >= 0.9
    assert metrics['rag/hybrid_all_recall@5'] >= 0.8 and 0.2 <= metrics['rag/dense_weight'] <= 0.8  # all forms; a fitted share
    assert default_index_dir(run_dir=tmp_path) == tmp_path/'rag'/'index'
    assert load_retriever(tmp_path/'rag'/'index').modes == ('bm25', 'dense', 'hybrid')
