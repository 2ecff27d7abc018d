"GRPO (05c) and RLOO (05d): opt-in stages of `dnf-rlhf run`, on PPO's prompts with the RM and the fact reward."
import json, math
from dataclasses import replace
from conftest import cli
from test_sft_rm import TrainableDtypes
from dnf_rlhf.core import Run, get_preset, load_json, save_json, stale_reasons
from dnf_rlhf.grpo import train_grpo

def test_run_with_grpo_and_rloo(tmp_path, test_env, monkeypatch):
    "`--with grpo rloo`: both train before evaluation, which compares them with SFT and PPO; a new opt-in: stale."
    out = tmp_path/'run'
    r = cli('run', '--preset', 'tiny', '--out', str(out), '--stages', 'lore', 'eval', '--with', 'grpo', 'rloo',
            env=test_env, timeout=1500)
    assert r.returncode == 0, r.stderr[-3000:]
    rep = json.loads((out/'report.json').read_text())
    assert [s['stage'] for s in rep['stages']] == ['lore', 'grpo', 'rloo', 'eval']
    md, ev = (out/'report.md').read_text(), load_json(out/'eval'/'metrics.json')
    assert '방법 비교' in md and all(f'| {m} |' in md for m in ('sft', 'ppo', 'grpo', 'rloo'))
    assert ev['eval/sft/kl_sft'] == 0.0 and all(math.isfinite(ev[f'eval/{m}/kl_sft']) for m in ('ppo', 'grpo', 'rloo'))
    assert load_json(out/'eval'/'resources.json')['peak_memory_mb'] > 0  # what building a stage cost, for the table
    man = load_json(out/'eval'/'manifest.json')
    assert man['compared'] == ['sft', 'ppo', 'grpo', 'rloo']
    monkeypatch.setenv('DNF_RLHF_TEST', '1')
    run = Run(get_preset('tiny'), dir=out)
    assert stale_reasons(run, 'eval') == []
    save_json(out/'eval'/'manifest.json', {**man, 'compared': ['sft', 'ppo', 'grpo']})  # as if rloo came later
    assert stale_reasons(run, 'eval') == ['compared models changed (grpo, ppo, sft -> grpo, ppo, rloo, sft)']
    for name in ('grpo', 'rloo'):
        m = load_json(out/name/'metrics.json')
        assert m[f'{name}/steps'] == 4 and m[f'{name}/a/questions'] > 0 and m[f'{name}/train/questions'] > 0
        assert all(math.isfinite(v) for v in m.values() if isinstance(v, float)), m
        assert (out/name/'adapter'/'adapter_model.safetensors').exists() and not (out/name/'adapter'/'ref').exists()
        rows = [json.loads(x) for x in (out/name/'before_after.jsonl').read_text().splitlines()]
        assert {r['group'] for r in rows} == {'train', 'train_sampled', 'a'} and all(r['policy'] for r in rows)
        assert load_json(out/name/'manifest.json')['reward_weights'] == {'fact': 1.0}

def test_grpo_on_a_4bit_base_trains_fp32_adapters(tmp_path):
    "GRPO on NF4 (the GPU presets' layout): TRL's bf16 adapters are put back to fp32, and the fact reward alone trains."
    seen = TrainableDtypes()
    run = Run(replace(get_preset('test'), quantization='nf4'),
              overrides={'sft': dict(max_steps=2, eval_steps=2, max_new_tokens=8, heldout_prompts=4),
                         'grpo': dict(max_steps=1, eval_prompts=2)})
    m = train_grpo(tmp_path, run, callbacks=[seen])
    assert seen.dtypes == {'torch.float32'}, seen.dtypes  # a T4's fp16 scaler cannot unscale bf16 gradients
    assert m['grpo/steps'] == 1 and load_json(tmp_path/'manifest.json')['reward_weights'] == {'fact': 1.0}
    assert load_json(tmp_path/'manifest.json')['base']['quantization'] == 'nf4'
