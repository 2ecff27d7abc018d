#!/usr/bin/env python3
"""SFT and reward model on the full `tiny` preset (2 CPU cores), plus a reward model trained and tested on the
friendly & harmless project's VAIV preference pairs (../shared/data/vaiv, null without it).

Last line: one JSON object with sft_eval_loss_start/end, sft_eos_rate, sft_haeyo_rate, SFT's closed-book factual accuracy
on each held-out group of 02's split (sft_fact_acc_a / _b / _new: greedy, <= 64 new tokens), the reward model's accuracies
on each group's held-out pairs (rm_a_accuracy, rm_a_kind_mean, rm_a_accuracy_fact_swap, rm_a_length_baseline, ...), rm_accuracy,
rm_accuracy_fact_swap, rm_length_baseline, rm_bow_baseline, the wall seconds of each stage, and
rm_accuracy_vaiv / rm_length_baseline_vaiv next to that project's published RM v1 accuracy (0.65).
Also `lm_prefers_true_*`: how often the base and SFT language models give the true answer of a fact-swap pair the
higher log-probability (SFT also with the lore sentence that states the fact as retrieved context), on held-out and
training pairs. 0.5 is chance: a reward model cannot read knowledge its backbone does not hold (issue #7's fact-swap target).
And `sft_loglik_<group>_*`: every held-out pair ranked by SFT's own log-likelihood of each answer, as rm_<group>_* are
(accuracy, kind_mean, accuracy_fact_swap): where tiny's reward model (rm.head='lm', SimPO's reward from SFT's adapter)
starts before its training; the VAIV model keeps a score head (SCORE_HEAD), like the published one.
Artifacts are cached (DNF_RLHF_CACHE), so a second run reports the recorded training seconds without retraining.
"""
import json, os, sys, tempfile, time
from dataclasses import replace
from pathlib import Path
os.environ.pop('IN_TEST', None); os.environ.pop('DNF_RLHF_TEST', None)  # the full tiny size, not nbdev-test's
from dnf_rlhf.core import get_preset, ProjectConfig, Run, load_json, run_stage, METRICS
from dnf_rlhf.formats import write_jsonl
from dnf_rlhf.reward import train_rm, load_pairs  # registers the tinybase, sft and rm stages

SHARED = Path(__file__).resolve().parent.parent.parent/'shared'/'data'/'vaiv'
SCORE_HEAD = dict(head='score', with_persona=False, lr=2e-3, epochs=3)  # tiny's RM before the LM head (2026-12-05)

def timed(fn):
    t = time.time(); r = fn(); return r, round(time.time() - t, 1)

def vaiv_rm(run) -> dict:
    "Reward model on VAIV train pairs (conversation + hatespeech + translation), accuracy on their test pairs."
    if not SHARED.exists(): return {'rm_accuracy_vaiv': None, 'rm_length_baseline_vaiv': None, 'vaiv_note': 'no ../shared/data'}
    from dnf_rlhf.datagen import load_vaiv
    with tempfile.TemporaryDirectory() as d:
        for split in ('train', 'test'):
            pairs = [p for f in ('conversation', 'hatespeech', 'translation') for p in load_vaiv(SHARED/f'{f}_{split}.json')]
            write_jsonl(Path(d)/f'pairs_{split}.jsonl', pairs)
        run = replace(run, dir=d, overrides={'rm': SCORE_HEAD})  # a score head: VAIV's published RMs are classifiers
        run_stage(run, 'tinybase')  # the project's tiny base, not one trained on the VAIV folder
        m = train_rm(Path(d)/'rm', replace(run, project=ProjectConfig(datasets_dir=d)), normalise=False)
    return {'rm_accuracy_vaiv': m['rm/accuracy'], 'rm_length_baseline_vaiv': m['rm/length_baseline'],
            'rm_bow_baseline_vaiv': m['rm/bow_baseline'], 'rm_pairs_vaiv': m['rm/train_pairs'], 'rm_seconds_vaiv': m['rm/train_seconds'],
            'rm_accuracy_vaiv_published_v1': 0.65}

def answer_logprob(model, tok, prompt:str, answer:str, context:str|None=None, persona:str|None=None) -> float:
    "Sum of the answer tokens' log-probabilities (answer + EOS) after the rendered prompt: the tokens SFT trains on."
    import torch
    from dnf_rlhf.chat import build_messages, encode_example
    ex = encode_example(tok, build_messages(prompt, context=context, persona=persona), answer, tok.model_max_length)
    ids, is_answer = torch.tensor([ex['input_ids']]), torch.tensor(ex['completion_mask'][1:]).bool()
    with torch.no_grad(): logp = model(input_ids=ids).logits[0, :-1].float().log_softmax(-1)  # position t predicts token t + 1
    return float(logp.gather(-1, ids[0, 1:, None])[:, 0][is_answer].sum())

def knowledge_probe(run) -> dict:
    "Share of fact-swap pairs whose true answer the base / SFT model finds likelier (SFT also given the fact's lore sentence)."
    from dnf_rlhf.models import load_pretrained, load_chat
    from dnf_rlhf.lore import load_corpus, load_facts
    from dnf_rlhf.demo_data import answer_sentence
    docs = {d.id: d for d in load_corpus()}
    facts = {f'{f.doc_id}:{f.attribute}': f for f in load_facts(docs=list(docs.values()))}
    evidence = lambda p: ' '.join(dict.fromkeys(answer_sentence(docs[facts[k].doc_id], facts[k].span(docs[facts[k].doc_id])[0]) for k in p.facts))
    base, btok, _ = load_pretrained(run)
    sft, stok = load_chat(run, 'sft')
    readers = {'base': (base.eval(), btok, lambda p: None), 'sft': (sft.eval(), stok, lambda p: None), 'sft_gold_context': (sft, stok, evidence)}
    out = {}
    for split, name in (('test', 'heldout'), ('train', 'train')):
        pairs = [p for p in load_pairs(ProjectConfig(), split) if p.kind == 'fact_swap'][:300]
        out[f'fact_swap_pairs_{name}'] = len(pairs)
        for r, (model, tok, ctx) in readers.items():
            wins = [answer_logprob(model, tok, p.prompt, p.chosen, ctx(p)) > answer_logprob(model, tok, p.prompt, p.rejected, ctx(p)) for p in pairs]
            out[f'lm_prefers_true_{r}_{name}'] = round(sum(wins) / len(wins), 3)
    return out

def lm_reward_by_group(run) -> dict:
    "Every held-out pair ranked by SFT's log-likelihood of each answer (its training persona), per group of 02's split."
    from dnf_rlhf.models import load_chat
    from dnf_rlhf.reward import group_accuracies
    from dnf_rlhf.sft import sft_persona
    sft, tok = load_chat(run, 'sft')
    pairs, persona = load_pairs(run.project, 'test'), sft_persona(run)
    lp = lambda p, a: answer_logprob(sft, tok, p.prompt, a, persona=persona)
    wins = [float(lp(p, p.chosen) > lp(p, p.rejected)) for p in pairs]
    m = group_accuracies(pairs, wins, run.project, prefix='sft_loglik_')
    keep = ('/accuracy', '/kind_mean', '/accuracy_fact_swap')
    return {k.replace('/', '_'): v for k, v in m.items() if k.endswith(keep)}

def closed_book_by_group(run) -> dict:
    "SFT's closed-book factual accuracy (mean, SE) on the evaluation's fact questions of each group: greedy, <= 64 new tokens."
    from dnf_rlhf.models import load_chat
    from dnf_rlhf.chat import generate_answers
    from dnf_rlhf.sft import sft_messages
    from dnf_rlhf.evaluate import eval_prompts
    from dnf_rlhf.demo_data import GROUP_TAGS, load_splits, record_group, fact_key
    from dnf_rlhf.lore import load_facts
    from dnf_rlhf.stats import fact_accuracy, mean_se, MAX_ANSWER_TOKENS
    recs = [r for r in eval_prompts(run.project, run.cfg('eval')) if r.kind == 'fact']
    model, tok = load_chat(run, 'sft')
    answers = generate_answers(model, tok, [sft_messages(r, run) for r in recs], MAX_ANSWER_TOKENS)
    facts, splits, out = {fact_key(f): f for f in load_facts()}, load_splits(), {}
    for g, tag in GROUP_TAGS.items():
        accs = [fact_accuracy(a['text'], r.facts, facts, a['n_tokens']) for r, a in zip(recs, answers) if record_group(r, splits) == g]
        out[f'sft_fact_acc_{tag}'], out[f'sft_fact_acc_{tag}_se'] = mean_se(accs)
        out[f'sft_fact_questions_{tag}'] = len(accs)
    return out

if __name__ == '__main__':
    run = Run(get_preset(sys.argv[1] if len(sys.argv) > 1 else 'tiny'))
    preset = run.preset
    base, t_base = timed(lambda: run.artifact('tinybase'))
    sd, t_sft = timed(lambda: run.artifact('sft'))
    rd, t_rm = timed(lambda: run.artifact('rm'))
    b, s, r = load_json(base/METRICS), load_json(sd/METRICS), load_json(rd/METRICS)
    out = {'preset': preset.name, 'cpus': os.cpu_count(),
           'base_heldout_loss': b['base/heldout_loss'], 'base_unigram_loss': b['base/unigram_loss'], 'base_seconds': b['base/seconds'],
           'sft_eval_loss_start': s['sft/eval_loss_start'], 'sft_eval_loss_end': s['sft/eval_loss_end'],
           'sft_eval_loss_drop': 1 - s['sft/eval_loss_end'] / s['sft/eval_loss_start'],
           'sft_eos_rate': s['sft/nonempty_eos_rate'], 'sft_haeyo_rate': s['sft/haeyo_rate'], 'sft_seconds': s['sft/train_seconds'],
           'rm_accuracy': r['rm/accuracy'], 'rm_accuracy_fact_swap': r.get('rm/accuracy_fact_swap'),
           'rm_length_baseline': r['rm/length_baseline'], 'rm_bow_baseline': r['rm/bow_baseline'],
           'rm_reward_length_corr': r['rm/reward_length_corr'], 'rm_seconds': r['rm/train_seconds'],
           'wall_seconds_this_run': {'base': t_base, 'sft': t_sft, 'rm': t_rm},
           **{k.replace('/', '_'): v for k, v in r.items() if k.startswith(('rm/a/', 'rm/b/', 'rm/new/'))}}  # 02's groups
    out.update(closed_book_by_group(run))
    out.update(knowledge_probe(run))
    out.update(lm_reward_by_group(run))
    out.update(vaiv_rm(run))
    print(json.dumps(out, ensure_ascii=False))
