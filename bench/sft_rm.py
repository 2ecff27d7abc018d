#!/usr/bin/env python3
"""SFT and reward model on the full `tiny` preset (2 CPU cores), plus a reward model trained and tested on the
friendly & harmless project's VAIV preference pairs (../shared/data/vaiv, null without it).

Last line: one JSON object with sft_eval_loss_start/end, sft_eos_rate, sft_haeyo_rate, rm_accuracy,
rm_accuracy_fact_swap, rm_length_baseline, rm_bow_baseline, the wall seconds of each stage, and
rm_accuracy_vaiv / rm_length_baseline_vaiv next to that project's published RM v1 accuracy (0.65).
Artifacts are cached (DNF_RLHF_CACHE), so a second run reports the recorded training seconds without retraining.
"""
import json, os, sys, tempfile, time
from pathlib import Path
os.environ.pop('IN_TEST', None); os.environ.pop('DNF_RLHF_TEST', None)  # the full tiny size, not nbdev-test's
from dnf_rlhf.core import get_preset, ProjectConfig, load_json, METRICS
from dnf_rlhf.formats import write_jsonl
from dnf_rlhf.tinybase import tiny_base_path
from dnf_rlhf.sft import sft_dir
from dnf_rlhf.reward import rm_dir, train_rm

SHARED = Path(__file__).resolve().parent.parent.parent/'shared'/'data'/'vaiv'

def timed(fn):
    t = time.time(); r = fn(); return r, round(time.time() - t, 1)

def vaiv_rm(preset) -> dict:
    "Reward model on VAIV train pairs (conversation + hatespeech + translation), accuracy on their test pairs."
    if not SHARED.exists(): return {'rm_accuracy_vaiv': None, 'rm_length_baseline_vaiv': None, 'vaiv_note': 'no ../shared/data'}
    from dnf_rlhf.datagen import load_vaiv
    with tempfile.TemporaryDirectory() as d:
        for split in ('train', 'test'):
            pairs = [p for f in ('conversation', 'hatespeech', 'translation') for p in load_vaiv(SHARED/f'{f}_{split}.json')]
            write_jsonl(Path(d)/f'pairs_{split}.jsonl', pairs)
        m = train_rm(Path(d)/'rm', preset, ProjectConfig(datasets_dir=d), normalise=False)
    return {'rm_accuracy_vaiv': m['rm/accuracy'], 'rm_length_baseline_vaiv': m['rm/length_baseline'],
            'rm_bow_baseline_vaiv': m['rm/bow_baseline'], 'rm_pairs_vaiv': m['rm/train_pairs'], 'rm_seconds_vaiv': m['rm/train_seconds'],
            'rm_accuracy_vaiv_published_v1': 0.65}

if __name__ == '__main__':
    preset = get_preset(sys.argv[1] if len(sys.argv) > 1 else 'tiny')
    base, t_base = timed(lambda: tiny_base_path(preset.tiny_size))
    sd, t_sft = timed(lambda: sft_dir(preset))
    rd, t_rm = timed(lambda: rm_dir(preset))
    b, s, r = load_json(base/METRICS), load_json(sd/METRICS), load_json(rd/METRICS)
    out = {'preset': preset.name, 'cpus': os.cpu_count(),
           'base_heldout_loss': b['base/heldout_loss'], 'base_unigram_loss': b['base/unigram_loss'], 'base_seconds': b['base/seconds'],
           'sft_eval_loss_start': s['sft/eval_loss_start'], 'sft_eval_loss_end': s['sft/eval_loss_end'],
           'sft_eval_loss_drop': 1 - s['sft/eval_loss_end'] / s['sft/eval_loss_start'],
           'sft_eos_rate': s['sft/nonempty_eos_rate'], 'sft_haeyo_rate': s['sft/haeyo_rate'], 'sft_seconds': s['sft/train_seconds'],
           'rm_accuracy': r['rm/accuracy'], 'rm_accuracy_fact_swap': r.get('rm/accuracy_fact_swap'),
           'rm_length_baseline': r['rm/length_baseline'], 'rm_bow_baseline': r['rm/bow_baseline'],
           'rm_reward_length_corr': r['rm/reward_length_corr'], 'rm_seconds': r['rm/train_seconds'],
           'wall_seconds_this_run': {'base': t_base, 'sft': t_sft, 'rm': t_rm}}
    out.update(vaiv_rm(preset))
    print(json.dumps(out, ensure_ascii=False))
