"GRPO (05c), RLOO (05d) and PPO with the fact reward (05): opt-in stages of `dnf-rlhf run`, on PPO's prompts."
import json, math
from dataclasses import replace
from conftest import cli
from test_sft_rm import TrainableDtypes
from dnf_rlhf.core import Run, get_preset, load_json, save_json, stale_reasons, stale_stages
from dnf_rlhf.grpo import train_grpo

def test_run_with_the_opt_in_methods(tmp_path, test_env, monkeypatch):
    "`--with ppo_fact grpo rloo`: they train before evaluation, which compares them with SFT and PPO; new ones: stale."
    out, methods = tmp_path/'run', ('ppo', 'ppo_fact', 'grpo', 'rloo')
    r = cli('run', '--preset', 'tiny', '--out', str(out), '--stages', 'lore', 'eval',
            '--with', 'ppo_fact', 'grpo', 'rloo', env=test_env, timeout=1800)
    assert r.returncode == 0, r.stderr[-3000:]
    rep = json.loads((out/'report.json').read_text())
    assert [s['stage'] for s in rep['stages']] == ['lore', 'ppo_fact', 'grpo', 'rloo', 'eval']
    md, ev = (out/'report.md').read_text(), load_json(out/'eval'/'metrics.json')
    assert '방법 비교' in md and all(f'| {m} |' in md for m in ('sft', *methods))
    assert ev['eval/sft/kl_sft'] == 0.0 and all(math.isfinite(ev[f'eval/{m}/kl_sft']) for m in methods)
    assert load_json(out/'eval'/'resources.json')['peak_memory_mb'] > 0  # what building a stage cost, for the table
    man = load_json(out/'eval'/'manifest.json')
    assert man['compared'] == ['sft', *methods]
    monkeypatch.setenv('DNF_RLHF_TEST', '1')
    run = Run(get_preset('tiny'), dir=out)
    assert stale_reasons(run, 'eval') == []
    save_json(out/'eval'/'manifest.json', {**man, 'compared': ['sft', 'ppo', 'grpo']})  # as if rloo came later
    assert stale_reasons(run, 'eval') == ['compared models changed (grpo, ppo, sft -> grpo, ppo, ppo_fact, rloo, sft)']
    save_json(out/'eval'/'manifest.json', man)
    rl = load_json(out/'rloo'/'manifest.json')  # an opt-in model rebuilt with other settings: evaluation goes with it
    save_json(out/'rloo'/'manifest.json', {**rl, 'config': {**rl['config'], 'max_steps': 1}})
    assert stale_stages(run, ['rloo', 'eval'])['eval'] == 'built on stale rloo'
    pf, ppo = load_json(out/'ppo_fact'/'metrics.json'), load_json(run.artifact('ppo')/'metrics.json')  # from the cache
    assert pf['ppo_fact/steps'] == ppo['ppo/steps'] == run.cfg('ppo').steps and 'ppo/steps' not in pf  # own namespace
    assert load_json(out/'ppo_fact'/'manifest.json')['reward_weights'] == {'rm': 1.0, 'fact': 1.0}
    assert load_json(run.artifact('ppo')/'manifest.json')['reward_weights'] == {'rm': 1.0, 'fact': 0.0}
    hist = load_json(out/'ppo_fact'/'history.json')  # the fact reward was there to learn from: the score moved with it
    assert all(-1.0 <= h['ppo/reward_fact'] <= 1.0 for h in hist) and any(h['ppo/reward_fact'] != 0 for h in hist)
    for name in ('grpo', 'rloo'):
        m = load_json(out/name/'metrics.json')
        assert m[f'{name}/steps'] == 4 and m[f'{name}/a/questions'] > 0 and m[f'{name}/train/questions'] > 0
        assert all(math.isfinite(v) for v in m.values() if isinstance(v, float)), m
        assert (out/name/'adapter'/'adapter_model.safetensors').exists() and not (out/name/'adapter'/'ref').exists()
        rows = [json.loads(x) for x in (out/name/'before_after.jsonl').read_text().splitlines()]
        assert {r['group'] for r in rows} == {'train', 'train_sampled', 'a'} and all('policy' in r for r in rows)
        assert all(r['policy'] for r in rows if r['group'] != 'train_sampled')  # a sample may be EOS at once; greedy not
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
