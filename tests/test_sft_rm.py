"SFT and reward model: the 4-bit QLoRA path on CPU, resume after a disconnect, and GPU presets that never fall back."
import json, os
from dataclasses import replace
from pathlib import Path
import pytest
from transformers import TrainerCallback
from conftest import cli
from dnf_rlhf.core import Run, get_preset, load_json, METRICS, MissingArtifactError
from dnf_rlhf.sft import train_sft
from dnf_rlhf.reward import train_rm

class Steps(TrainerCallback):
    "Record the optimizer steps this run actually took."
    def __init__(self): self.seen = []
    def on_step_end(self, args, state, control, **kw): self.seen.append(state.global_step)

class Disconnect(TrainerCallback):
    "Raise right after the checkpoint of step `at` is written, like a Colab runtime that goes away."
    def __init__(self, at): self.at = at
    def on_save(self, args, state, control, **kw):
        if state.global_step >= self.at: raise ConnectionError(f'runtime disconnected at step {state.global_step}')

def small(preset='test', **sft) -> Run:
    "A `test`-size run with short SFT evaluations (and these SFT settings)."
    p = preset if not isinstance(preset, str) else get_preset(preset)
    return Run(p, overrides={'sft': dict(eval_steps=2, max_new_tokens=8, **sft)})

class TrainableDtypes(TrainerCallback):
    "Record the dtypes of the parameters the optimizer updates, as training starts."
    def on_train_begin(self, args, state, control, model=None, **kw):
        self.dtypes = {str(p.dtype) for p in model.parameters() if p.requires_grad}

def test_qlora_4bit_steps_on_cpu(tmp_path):
    seen = TrainableDtypes()
    m = train_sft(tmp_path, small(replace(get_preset('test'), quantization='nf4'), max_steps=3), limit=24, callbacks=[seen])
    assert seen.dtypes == {'torch.float32'}, seen.dtypes  # TRL casts 4-bit adapters to bf16: a T4's fp16 scaler then fails
    assert m['sft/steps'] == 3
    assert m['sft/eval_loss_start'] > 0 and m['sft/eval_loss_end'] > 0  # evaluation and training alternate on 4-bit CPU
    man = load_json(tmp_path/'manifest.json')
    assert man['base']['quantization'] == 'nf4'
    import bitsandbytes as bnb  # the adapter was trained on a 4-bit base: the base linear layers were Linear4bit
    assert (tmp_path/'adapter'/'adapter_model.safetensors').exists()

def test_qlora_reward_model_trains_fp32_adapters(tmp_path):
    seen = TrainableDtypes()
    run = Run(replace(get_preset('test'), quantization='nf4'), overrides={'rm': dict(max_steps=1)})
    m = train_rm(tmp_path, run, normalise=False, callbacks=[seen])
    assert seen.dtypes == {'torch.float32'}, seen.dtypes  # LoRA and the score head's trainable copy
    assert m['rm/train_pairs'] > 0

def test_resume_after_disconnect(tmp_path):
    with pytest.raises(ConnectionError):
        train_sft(tmp_path, small(max_steps=6), limit=48, callbacks=[Disconnect(4)])
    assert (tmp_path/'checkpoints'/'checkpoint-4').exists()  # checkpoints every eval_steps=2
    steps = Steps()
    m = train_sft(tmp_path, small(max_steps=6), limit=48, callbacks=[steps])
    assert m['sft/resumed'] and m['sft/steps'] == 6
    assert steps.seen == [5, 6]  # the second run continued from checkpoint-4 instead of starting over

def test_gpu_preset_stops_naming_the_notebook(tmp_path, test_env):
    r = cli('rm', '--preset', 'colab-t4', '--out', str(tmp_path), env=test_env)
    assert r.returncode != 0 and '03_sft.ipynb' in r.stderr, r.stderr[-2000:]
