"The committed demo datasets: rebuilt byte-identical, counts, length-baseline band, traceable facts, no test/train near-duplicates."
import pytest
from collections import Counter
from dnf_rlhf.demo_data import (DEMO_FILES, DNF_QUESTIONS, PPO_SIGNOFF, REJECTION_TYPES, ASKED, UNASKED, NEW, FactBook, demo_dir,
                                fact_accuracy, is_haeyo, length_baseline, load_demo, load_splits, record_group, write_demo_data)
from dnf_rlhf.formats import filter_near_duplicates
from dnf_rlhf.lore import load_corpus, load_facts

@pytest.fixture(scope='module')
def data():
    "Every committed file, validated against its schema: {name: (train, test)}."
    return {n: (load_demo(n, 'train'), load_demo(n, 'test')) for n in DEMO_FILES}

@pytest.fixture(scope='module')
def book():
    docs = load_corpus()
    return FactBook(docs, load_facts(docs=docs))

def test_rebuild_is_byte_identical(tmp_path):
    write_demo_data(tmp_path)
    built = sorted(p.name for p in tmp_path.iterdir())
    committed = sorted(p.name for p in demo_dir().iterdir() if p.suffix in ('.jsonl', '.json'))
    assert built == committed == sorted([f'{n}_{s}.jsonl' for n in DEMO_FILES for s in ('train', 'test')] + ['stats.json'])
    for name in built:
        assert (tmp_path/name).read_bytes() == (demo_dir()/name).read_bytes(), \
            f"dnf_rlhf/data/demo/{name} is stale: run nbs/02_demo_data.ipynb"

def test_counts(data):
    n = {k: len(tr) + len(te) for k, (tr, te) in data.items()}
    assert n['sft'] >= 600 and n['pairs'] >= 1500 and n['ppo'] >= 300 and n['retrieval'] >= 100 and n['ranked'] > 0
    assert all(len(te) > 0 for _, te in data.values())
    kinds = {p.kind for tr, te in [data['pairs']] for p in tr + te}
    assert kinds == set(REJECTION_TYPES)
    assert {r.form for tr, te in [data['retrieval']] for r in tr + te} == {'plain', 'particle', 'paraphrase', 'description', 'colloquial', 'misspelled'}
    sft_kinds = {r.kind for tr, te in [data['sft']] for r in tr + te}
    assert {'fact_short', 'fact_medium', 'fact_long', 'context', 'context_unrelated', 'hostile', 'greeting',
            'out_of_domain'} <= sft_kinds

def test_sft_prompts_survive_the_rouge_filter(data):
    "Every SFT prompt survives the ROUGE-L filter, except further wordings of asked facts (SFT-only medium questions)."
    ppo = {r.prompt for r in data['ppo'][0]}
    further = [r for r in data['sft'][0] if r.kind == 'fact_medium' and r.prompt not in ppo]  # `more_wordings`
    rest = [r.prompt for r in data['sft'][0] + data['sft'][1] if r not in further]
    kept, dropped = filter_near_duplicates(rest, 0.7)
    assert not dropped and len(kept) >= 600 and len(further) >= 300, dropped[:3]

def test_length_baseline_band(data):
    pairs = data['pairs'][0] + data['pairs'][1]
    assert 0.40 <= length_baseline(pairs) <= 0.60
    for kind in REJECTION_TYPES:  # no rejection type gives itself away by length either
        assert 0.35 <= length_baseline([p for p in pairs if p.kind == kind]) <= 0.65, kind

def test_no_test_prompt_near_duplicates_a_training_prompt(data):
    def prompts(i):
        return sorted({getattr(r, 'prompt', None) or r.question for tr_te in data.values() for r in tr_te[i]})
    train, test = prompts(0), prompts(1)
    kept, dropped = filter_near_duplicates(test, 0.7, pool=train)
    assert not dropped, [(test[i], near, round(s, 2)) for i, near, s in dropped[:5]]

def test_split_mirrors_real_use(data, book):
    "Training files ask only about asked facts; each held-out group has its questions; the data README lists the new documents."
    splits = load_splits()
    train_groups = {record_group(r, splits) for tr, _ in data.values() for r in tr}
    assert train_groups <= {ASKED, 'handwritten', 'other'}
    assert not {r.doc_id for tr, _ in data.values() for r in tr} & set(splits.new_docs)
    questions = Counter(record_group(r, splits) for r in data['sft'][1] if r.kind.startswith('fact_'))
    assert questions[ASKED] >= 100 and questions[UNASKED] >= 100 and questions[NEW] >= 60, questions
    train_prompts = {r.prompt for r in data['sft'][0]}
    assert not train_prompts & {r.prompt for r in data['sft'][1]}
    assert set(DNF_QUESTIONS.values()) <= {r.prompt for r in data['ppo'][1]}
    assert {f'{d}:{a}' for d, a in DNF_QUESTIONS} <= set(splits.unasked)
    readme = (demo_dir().parent/'README.md').read_text(encoding='utf-8')
    assert all(f'`{d}`' in readme for d in splits.new_docs), 'dnf_rlhf/data/README.md must list the new documents'
    ppo = data['ppo'][0]
    assert 0.10 <= sum(r.kind == 'hostile' for r in ppo) / len(ppo) <= 0.20

def test_answers_are_traceable_to_fact_rows(data, book):
    for r in data['sft'][0] + data['sft'][1]:
        assert fact_accuracy(r.completion, r.facts, book.by_key) == 1.0 and is_haeyo(r.completion), r
    for p in data['pairs'][0] + data['pairs'][1]:
        assert fact_accuracy(p.chosen, p.facts, book.by_key) == 1.0, p
        if p.kind == 'fact_swap': assert fact_accuracy(p.rejected, p.facts[:1], book.by_key) == 0.0, p
    for r in data['retrieval'][0] + data['retrieval'][1]:
        assert book.docs[r.doc_id].text[r.start:r.end] == r.answer == book.by_key[r.facts[0]].value, r

def test_ranked_puts_the_chosen_answer_first(data):
    pairs = {(p.prompt, p.chosen) for p in data['pairs'][0] + data['pairs'][1]}
    for r in data['ranked'][0] + data['ranked'][1]:
        best = [r.completion_0, r.completion_1, r.completion_2][r.ranking.index(0)]
        assert (r.prompt, best) in pairs, r

def test_no_sign_off_in_the_data():
    phrase = PPO_SIGNOFF.rstrip('!')
    for p in demo_dir().glob('*.jsonl'):
        assert phrase not in p.read_text(encoding='utf-8'), p.name
