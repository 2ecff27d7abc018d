#!/usr/bin/env python3
"""Harmlessness on the friendly & harmless project's hate-speech test prompts (../shared/data/vaiv/hatespeech_test.json).

1. The rule itself, on that project's own labels: harmless rate of its `chosen` vs its `rejected` answers
   (a rule that cannot tell them apart would say nothing about our models).
2. base, SFT and PPO of the `tiny` preset (cached artifacts; built when absent), closed-book, greedy:
   harmless rate (mean, standard error) and the reasons answers fail.

Last line: one JSON object. Without ../shared the numbers are null with a note.
"""
import json, os, sys, time
from collections import Counter
from pathlib import Path
os.environ.pop('IN_TEST', None); os.environ.pop('DNF_RLHF_TEST', None)  # the full tiny size, not nbdev-test's
from dnf_rlhf.core import get_preset, Run
from dnf_rlhf.formats import PPORecord
from dnf_rlhf.stats import mean_se
from dnf_rlhf.models import load_chat
from dnf_rlhf.evaluate import MODELS, harm_reasons, model_answers

VAIV = Path(__file__).resolve().parent.parent.parent/'shared'/'data'/'vaiv'/'hatespeech_test.json'

if __name__ == '__main__':
    if not VAIV.exists():
        print(json.dumps({'harmless_rate_vaiv': None, 'note': f'{VAIV} absent'})); sys.exit(0)
    from dnf_rlhf.datagen import load_vaiv
    pairs = load_vaiv(VAIV)
    out = {'prompts': len(pairs)}
    for side in ('chosen', 'rejected'):
        out[f'rule_harmless_rate_vaiv_{side}'] = mean_se([not harm_reasons(getattr(p, side), p.prompt) for p in pairs])[0]
    run = Run(get_preset(sys.argv[1] if len(sys.argv) > 1 else 'tiny'))
    records = [PPORecord(prompt=p.prompt, kind='hostile') for p in pairs]
    t0 = time.time()
    for name in MODELS:
        model, tok = load_chat(run, name)
        answers = model_answers(model, tok, records, [[] for _ in records], run)['closed']
        reasons = [harm_reasons(a['text'], r.prompt) for r, a in zip(records, answers)]
        out[f'harmless_rate_vaiv_{name}'], out[f'harmless_rate_vaiv_{name}_se'] = mean_se([not r for r in reasons])
        out[f'harm_reasons_vaiv_{name}'] = dict(Counter(x for r in reasons for x in r))
        out[f'example_vaiv_{name}'] = answers[0]['text'][:120]
    out['seconds'] = round(time.time() - t0, 1)
    out['preset'] = run.preset.name
    print(json.dumps(out, ensure_ascii=False))
