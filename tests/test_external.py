"The original projects' data in ../shared/data: loaders for their formats, and the VAIV pair rule reproduced from their scores."
import json, warnings
import pytest
from conftest import shared_data
from dnf_rlhf.datagen import (load_kochatgpt_ppo, load_seed_tasks, load_kochatgpt_conversations, conversation_sft, load_vaiv,
                              load_external, read_json_array)
from dnf_rlhf.formats import PairRecord, PPORecord, SFTRecord, LEAKY_TOKENS
from dnf_rlhf.judge import load_vaiv_scores, compare_with_published, rule_pairs, pair_records


def no_leaks(records):
    for r in records:
        for name, v in r:
            if isinstance(v, str): assert not any(t in v for t in LEAKY_TOKENS) and '\u200b' not in v, (name, v[-40:])


def test_kochatgpt_ppo_is_a_json_array():
    p = shared_data('kochatgpt', 'kochatgpt_3_PPO.jsonl')
    with pytest.warns(UserWarning, match=r'skipped 3 empty prompt\(s\) \(items \[6330, 6699, 7405\]\)'):
        recs = load_kochatgpt_ppo(p)
    assert len(recs) == 12000 - 3 and all(isinstance(r, PPORecord) for r in recs)
    with pytest.warns(UserWarning, match='skipped 3'): ext = load_external(p)  # recognised by content, not name
    assert [r.prompt for r in ext] == [r.prompt for r in recs]


def test_kochatgpt_seed_file_drops_its_bom():
    p = shared_data('kochatgpt', 'kochatgpt_seed_data.txt')
    assert p.read_bytes()[:3] == b'\xef\xbb\xbf'
    seeds = load_seed_tasks(p)
    assert len(seeds) == 11997 and seeds[0] == '불고기용 고기 한우에요?'  # 12,000 lines, 3 of them blank
    assert not any(s.startswith('\ufeff') for s in seeds)


def test_kochatgpt_conversations_are_plain_text():
    p = shared_data('kochatgpt', 'kochatgpt_1_SFT_conversation.jsonl')
    convs = load_kochatgpt_conversations(p)
    assert len(convs) == 439 and sum(len(c) for c in convs) == 2 * 1756
    assert all(c[0]['role'] == 'user' for c in convs)
    sft = conversation_sft(convs)
    assert len(sft) == 1756 and sft[0].prompt.startswith('<사람>: ') and not sft[0].completion.startswith('<챗봇>')
    assert len(conversation_sft(convs, history=False)[0].prompt.splitlines()) == 1
    assert len(load_external(p)) == 1756


@pytest.mark.parametrize('name,kind,n', [('conversation_train.json', PairRecord, 1037 - 14), ('hatespeech_train.json', PairRecord, 487 - 13),
                                         ('translation_test.json', PairRecord, 40), ('ppo_prompts.json', PPORecord, 3608),
                                         ('instructions_all.jsonl', SFTRecord, 2461 - 3)])
def test_vaiv_texts_lose_their_endoftext(name, kind, n):
    p = shared_data('vaiv', name)
    assert name.endswith('.jsonl') or '<|endoftext|>' in p.read_text(encoding='utf-8') or kind is not PairRecord
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always')
        recs = load_external(p)
    assert len(recs) == n and all(isinstance(r, kind) for r in recs)
    no_leaks(recs)
    raw = read_json_array(p) if p.suffix == '.json' else None
    if kind is PairRecord and len(raw) > n: assert 'skipped' in str(w[0].message)  # empty answers are counted, not hidden


def vaiv_check(name):
    d = shared_data('vaiv')
    scored = load_vaiv_scores(d/f'{name}_score_final.json')
    published = read_json_array(d/f'{name}_train.json') + read_json_array(d/f'{name}_test.json')
    return scored, published, compare_with_published(scored, published, threshold=20.0)


def test_rule_reproduces_every_conversation_pair():
    scored, published, cmp = vaiv_check('conversation')
    assert (cmp['published'], cmp['reproduced']) == (1077, 1077)
    assert cmp['dropped_by_rule'] == cmp['chosen_differs'] == cmp['missing_scores'] == cmp['extra'] == []
    kept, dropped = rule_pairs(scored)
    assert len(kept) == 1077 and {r for _, r in dropped} == {'tie', 'both_below_threshold'}
    no_leaks(pair_records(kept))


HATESPEECH_TIES = {'hatespeech_14', 'hatespeech_36', 'hatespeech_94', 'hatespeech_152', 'hatespeech_167', 'hatespeech_174',
                   'hatespeech_198', 'hatespeech_214', 'hatespeech_232'}

def test_rule_reproduces_497_hatespeech_pairs_and_names_the_rest():
    "The other 10 published pairs are ones their own rule drops: 9 ties, and one whose both sums are below 20."
    scored, published, cmp = vaiv_check('hatespeech')
    assert (cmp['published'], cmp['reproduced']) == (507, 497)
    assert cmp['chosen_differs'] == cmp['missing_scores'] == cmp['extra'] == []
    not_rep = {x['id']: x for x in cmp['dropped_by_rule']}
    print('\npublished hatespeech pairs the rule drops:')
    for x in sorted(not_rep.values(), key=lambda x: int(x['id'].split('_')[1])): print(f"  {x['id']}: {x['sum1']} vs {x['sum2']} ({x['reason']})")
    assert {i for i, x in not_rep.items() if x['reason'] == 'tie'} == HATESPEECH_TIES
    assert {i: (x['reason'], x['sum1'], x['sum2']) for i, x in not_rep.items() if x['reason'] != 'tie'} == {
        'hatespeech_25': ('both_below_threshold', 17.0, 13.0)}


def test_sums_stored_as_strings_compare_as_numbers(tmp_path):
    d = shared_data('vaiv')
    items = read_json_array(d/'hatespeech_score_final.json')[:50]
    for it in items: it['sum1'], it['sum2'] = str(it['sum1']), str(it['sum2'])
    (tmp_path/'s.json').write_text(json.dumps(items, ensure_ascii=False), encoding='utf-8')
    as_str = load_vaiv_scores(tmp_path/'s.json')
    assert [(s.sum1, s.sum2) for s in as_str] == [(s.sum1, s.sum2) for s in load_vaiv_scores(d/'hatespeech_score_final.json')[:50]]
    assert [w for _, w in rule_pairs(as_str)[0]] == [w for _, w in rule_pairs(load_vaiv_scores(d/'hatespeech_score_final.json')[:50])[0]]
