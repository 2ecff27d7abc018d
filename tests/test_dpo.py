"DPO (05b): an opt-in stage of `dnf-rlhf run`, the SFT adapter its own reference (log 2 at step 0), fp32 QLoRA adapters."
import json, math
from dataclasses import replace
from conftest import cli
from test_sft_rm import TrainableDtypes
from dnf_rlhf.core import Run, get_preset, load_json
from dnf_rlhf.dpo import train_dpo

def test_run_with_dpo_adds_the_opt_in_stage(tmp_path, test_env):
    "`--with dpo` runs it beside the asked stages (SFT built on demand); held-out loss starts at log 2 and falls."
    out = tmp_path/'run'
    r = cli('run', '--preset', 'tiny', '--out', str(out), '--stages', 'lore', '--with', 'dpo', env=test_env, timeout=1500)
    assert r.returncode == 0, r.stderr[-3000:]
    rep = json.loads((out/'report.json').read_text())
    assert [s['stage'] for s in rep['stages']] == ['lore', 'dpo']
    m = load_json(out/'dpo'/'metrics.json')
    assert abs(m['dpo/step0_loss'] - math.log(2)) < 1e-3  # the policy starts as its reference
    assert m['dpo/heldout_loss'] < m['dpo/step0_loss'] and 0 <= m['dpo/accuracy'] <= 1 and 'dpo/a/accuracy' in m
    assert (out/'dpo'/'adapter'/'adapter_model.safetensors').exists() and not (out/'dpo'/'adapter'/'ref').exists()
    typo = cli('run', '--preset', 'tiny', '--out', str(out), '--with', 'ppo', env=test_env, timeout=300)
    assert typo.returncode == 2 and 'ppo' in typo.stderr  # only opt-in stages can be added

def test_dpo_on_a_4bit_base_trains_fp32_adapters(tmp_path):
    seen = TrainableDtypes()
    run = Run(replace(get_preset('test'), quantization='nf4'),
              overrides={'sft': dict(max_steps=2, eval_steps=2, max_new_tokens=8, heldout_prompts=4),
                         'dpo': dict(max_steps=1, heldout_pairs=8)})
    m = train_dpo(tmp_path, run, callbacks=[seen])
    assert seen.dtypes == {'torch.float32'}, seen.dtypes  # TRL casts 4-bit adapters to bf16 (a T4's fp16 scaler fails)
    assert abs(m['dpo/step0_loss'] - math.log(2)) < 1e-3 and m['dpo/test_pairs'] > 0
    assert load_json(tmp_path/'manifest.json')['base']['quantization'] == 'nf4'
