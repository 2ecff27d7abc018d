"""PPO step time: ours (shared layout) vs the classic TRL PPOTrainer (trl 0.11.4), and batched vs one-at-a-time rollouts.

1. rollout_speedup: sampling responses to the PPO batches of the timed steps, batched (left-padded, KV cache) vs a loop
   over the prompts one at a time (KV cache too), the same seed per batch in both modes; total seconds after a warm-up.
   (One batch's time is set by its longest response, so a single batch is a noisy measure.)
2. step_time_ratio_ours_vs_trl011: one full PPO step (generation, reward-model scoring, old/ref logprobs, values,
   ppo_epochs x minibatches of clipped updates) on the same SFT policy, same prompts, batch, minibatch, epochs, response
   length, LoRA, generation batch and KV cache, same torch threads; median step time after a warm-up step. TRL runs in
   its own virtual environment (trl 0.11.4, transformers 4.46.3, peft 0.13.2, accelerate 1.0.1, rich, torch 2.13.0),
   created by this script on first use under <cache>/trl011-venv; never a project dependency. Before timing, both stacks
   must give the same logits for the same input (transformers 4.46 does not read transformers 5's `rope_parameters`:
   the config is fixed up and checked; the tokenizer is read from its tokenizer.json). Learning rate 0 in both stacks, so
   that both policies stay the SFT model and sample equally long responses (all the work of a step is still done).

Usage: python bench/ppo_speed.py [--preset tiny] [--run-dir DIR] [--steps 10] [--skip-trl]. Last line: one JSON object.
"""
import argparse, json, statistics, subprocess, sys, tempfile, time
from pathlib import Path

TRL_PINS = ['torch==2.13.0', 'trl==0.11.4', 'transformers==4.46.3', 'peft==0.13.2', 'accelerate==1.0.1', 'rich']

TRL_WORKER = r'''
import dataclasses, json, shutil, statistics, sys, time
from pathlib import Path
import torch
spec = json.load(open(sys.argv[1]))
torch.set_num_threads(spec['threads'])
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification, PreTrainedTokenizerFast
from peft import PeftModel, LoraConfig
from trl import PPOConfig, PPOTrainer, AutoModelForCausalLMWithValueHead

def config(num_labels=None):
    "transformers 4.46 ignores transformers 5's rope_parameters: copy them into the old fields."
    c = AutoConfig.from_pretrained(spec['base'])
    rp = c.to_dict().get('rope_parameters') or {}
    if 'partial_rotary_factor' in rp: c.rotary_pct = c.partial_rotary_factor = rp['partial_rotary_factor']
    if 'rope_theta' in rp: c.rotary_emb_base = c.rope_theta = rp['rope_theta']
    if num_labels: c.num_labels = num_labels
    c.hidden_dropout = c.attention_dropout = 0.0
    return c

def old_adapter(src, dst):
    "The adapter with an adapter_config.json that peft 0.13 accepts (keys it does not know dropped)."
    dst.mkdir(parents=True, exist_ok=True)
    shutil.copy(Path(src)/'adapter_model.safetensors', dst/'adapter_model.safetensors')
    cfg = json.load(open(Path(src)/'adapter_config.json'))
    known = {f.name for f in dataclasses.fields(LoraConfig)}
    cfg = {k: v for k, v in cfg.items() if k in known or k == 'peft_type'}
    cfg['modules_to_save'] = sorted(set(cfg.get('modules_to_save') or [])) or None
    cfg['lora_dropout'] = 0.0
    json.dump(cfg, open(dst/'adapter_config.json', 'w'))
    return dst

work = Path(spec['work'])
tok = PreTrainedTokenizerFast(tokenizer_file=str(Path(spec['base'])/'tokenizer.json'), eos_token=spec['eos_token'],
                              pad_token=spec['pad_token'])
base = AutoModelForCausalLM.from_pretrained(spec['base'], config=config())
policy = PeftModel.from_pretrained(base, old_adapter(spec['sft_adapter'], work/'sft_old'), is_trainable=True)
with torch.no_grad():
    ids = torch.tensor(spec['check_ids'])
    logits = policy(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
torch.save(logits, work/'trl_logits.pt')
rm = PeftModel.from_pretrained(AutoModelForSequenceClassification.from_pretrained(spec['base'], config=config(1)),
                               old_adapter(spec['rm_adapter'], work/'rm_old')).eval()
model = AutoModelForCausalLMWithValueHead.from_pretrained(policy, summary_dropout_prob=0.0)
s = spec['ppo']
ppo_config = PPOConfig(batch_size=s['batch_size'], mini_batch_size=s['minibatch_size'], gradient_accumulation_steps=1,
                       ppo_epochs=s['ppo_epochs'], learning_rate=s['lr'], init_kl_coef=s['init_kl_coef'], adap_kl_ctrl=True,
                       target=s['kl_target'], horizon=s['kl_horizon'], gamma=s['gamma'], lam=s['lam'], cliprange=s['cliprange'],
                       cliprange_value=s['cliprange_value'], vf_coef=s['vf_coef'], max_grad_norm=s['max_grad_norm'], seed=0,
                       log_with=None)
trainer = PPOTrainer(ppo_config, model, ref_model=None, tokenizer=tok)
gen = dict(min_length=-1, top_k=0, top_p=1.0, do_sample=True, temperature=s['temperature'], max_new_tokens=s['max_new_tokens'],
           pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, use_cache=True)

@torch.no_grad()
def scores(rm_queries, responses):
    seqs = [torch.cat([torch.tensor(q), r]) for q, r in zip(rm_queries, responses)]
    L = max(len(x) for x in seqs)
    ids = torch.stack([torch.cat([x, torch.full((L - len(x),), tok.pad_token_id)]) for x in seqs])
    return list(rm(input_ids=ids, attention_mask=(ids != tok.pad_token_id).long()).logits[:, 0])

times, lengths = [], []
for i, (queries, rm_queries) in enumerate(zip(spec['queries'], spec['rm_queries'])):
    t0 = time.perf_counter()
    q = [torch.tensor(x) for x in queries]
    responses = trainer.generate(q, batch_size=s['batch_size'], return_prompt=False, **gen)
    stats = trainer.step(q, responses, scores(rm_queries, responses))
    if i: times.append(time.perf_counter() - t0); lengths += [len(r) for r in responses]
print(json.dumps(dict(step_seconds=statistics.median(times), steps_timed=len(times), mean_response_tokens=statistics.mean(lengths),
                      kl=float(stats['objective/kl']))))
'''

def trl_python(venv:Path) -> Path:
    "The virtual environment with the classic TRL stack (created on first use)."
    py = venv/'bin'/'python'
    if not (venv/'.complete').exists():
        subprocess.run([sys.executable, '-m', 'venv', str(venv)], check=True)
        subprocess.run([str(py), '-m', 'pip', 'install', '-q', *TRL_PINS], check=True, timeout=3600)
        (venv/'.complete').write_text(' '.join(TRL_PINS))
    return py

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--preset', default='tiny'); ap.add_argument('--run-dir', default=None, help='run folder with tinybase/sft/rm stages')
    ap.add_argument('--steps', type=int, default=10, help='timed PPO steps per stack (after one warm-up step); their batches also time the rollouts')
    ap.add_argument('--skip-trl', action='store_true')
    ap.add_argument('--threads', type=int, default=None, help="torch threads for both stacks (default: the PPO config's cpu_threads)")
    ap.add_argument('--trl-venv', default=None, help='virtual environment for classic TRL (default: <cache>/trl011-venv)')
    a = ap.parse_args()
    import torch
    from dataclasses import replace
    from dnf_rlhf.core import PRESETS, ProjectConfig, Run, cache_root, set_seed
    from dnf_rlhf.formats import read_jsonl, PPORecord
    from dnf_rlhf.models import base_source
    from dnf_rlhf.ppo import load_layout, encode_queries, ppo_step, kl_controller, batch_indices, cpu_threads
    run = Run(PRESETS[a.preset], ProjectConfig(), a.run_dir)
    preset, project = run.preset, run.project
    cfg, shape = run.cfg('ppo'), preset.ppo
    threads = a.threads or cfg.cpu_threads or torch.get_num_threads()
    t_start = time.time()
    out = dict(bench='ppo_speed', preset=preset.name, threads=threads, batch=shape.batch_size, minibatch=shape.minibatch_size,
               ppo_epochs=cfg.ppo_epochs, max_new_tokens=shape.max_new_tokens)
    train = read_jsonl(project.datasets_path()/'ppo_train.jsonl', PPORecord)
    batches = [[train[i] for i in batch_indices(len(train), s, shape.batch_size, 0)[0]] for s in range(a.steps + 1)]
    with cpu_threads(threads):
        layout, tok, norm = load_layout(run)
        enc = [encode_queries(tok, b, run) for b in batches]
        # 1. batched vs one-at-a-time rollouts (both with the KV cache)
        gen = lambda ids, mask: layout.generate(ids, mask, shape.max_new_tokens, tok.eos_token_id, tok.pad_token_id, cfg.temperature)
        layout.eval()
        def batched(e):
            with torch.no_grad(): gen(e['query_ids'], e['query_mask'])
        def one_by_one(e):
            with torch.no_grad():
                for q, m in zip(e['query_ids'], e['query_mask']):
                    gen(q[m.bool()][None], torch.ones(1, int(m.sum()), dtype=torch.long))
        def timed(fn):
            set_seed(0); fn(enc[0])  # warm-up
            total = 0.0
            for i, e in enumerate(enc):
                set_seed(i); t0 = time.perf_counter(); fn(e); total += time.perf_counter() - t0
            return total
        tb, tl = timed(batched), timed(one_by_one)
        out.update(rollout_seconds_batched=round(tb, 3), rollout_seconds_one_at_a_time=round(tl, 3), rollout_speedup=round(tl / tb, 2),
                   rollout_target=3.0)
        print('rollout', out, flush=True)
        if a.skip_trl:
            print(json.dumps(out)); return
        # logits of the SFT policy (before any update) for the cross-stack check
        check_ids = enc[0]['query_ids'][:2, -24:]
        check_ids = torch.where(check_ids == tok.pad_token_id, tok.eos_token_id, check_ids)
        layout.policy_mode()
        with torch.no_grad(): ours_logits = layout.lm(input_ids=check_ids, attention_mask=torch.ones_like(check_ids)).logits[:, :-1]
        # 2. our PPO step, timed as TRL's is: same prompts, one warm-up step
        # (learning rate 0 in both stacks: both policies stay the SFT model and sample equally long responses; every
        # forward, backward and optimizer step is still done)
        opt = torch.optim.AdamW(list(layout.trainable().values()), lr=0.0, eps=1e-5)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1.0)
        kl = kl_controller(cfg, shape)
        set_seed(0); ours, lengths = [], []
        for i, b in enumerate(enc):
            t0 = time.perf_counter(); m, ro = ppo_step(layout, tok, b, run, kl, opt, sched, norm)
            if i: ours.append(time.perf_counter() - t0); lengths.append(m['ppo/response_length'])
        out.update(ours_step_seconds=round(statistics.median(ours), 3), ours_mean_response_tokens=round(statistics.mean(lengths), 2))
        print('ours', out, flush=True)
    # 3. the same step in classic TRL
    sft, rm = run.artifact('sft'), run.artifact('rm')
    py = trl_python(Path(a.trl_venv) if a.trl_venv else cache_root()/'trl011-venv')
    with tempfile.TemporaryDirectory() as work:
        unpad = lambda ids, mask: [row[m.bool()].tolist() for row, m in zip(ids, mask)]
        spec = dict(work=work, threads=threads, base=base_source(run)[0], sft_adapter=str(sft/'adapter'),
                    rm_adapter=str(rm/'adapter'), eos_token=tok.eos_token, pad_token=tok.pad_token, check_ids=check_ids.tolist(),
                    queries=[unpad(e['query_ids'], e['query_mask']) for e in enc], rm_queries=[unpad(e['rm_ids'], e['rm_mask']) for e in enc],
                    ppo=dict(batch_size=shape.batch_size, minibatch_size=shape.minibatch_size, max_new_tokens=shape.max_new_tokens,
                             ppo_epochs=cfg.ppo_epochs, lr=0.0, init_kl_coef=cfg.init_kl_coef, kl_target=cfg.kl_target,
                             kl_horizon=kl.horizon, gamma=cfg.gamma, lam=cfg.lam, cliprange=cfg.cliprange,
                             cliprange_value=cfg.cliprange_value, vf_coef=cfg.vf_coef, max_grad_norm=cfg.max_grad_norm,
                             temperature=cfg.temperature))
        (Path(work)/'spec.json').write_text(json.dumps(spec))
        (Path(work)/'worker.py').write_text(TRL_WORKER)
        p = subprocess.run([str(py), str(Path(work)/'worker.py'), str(Path(work)/'spec.json')], capture_output=True, text=True,
                           timeout=3600)
        if p.returncode: sys.exit(f"TRL worker failed:\n{p.stderr[-4000:]}")
        trl = json.loads(p.stdout.strip().splitlines()[-1])
        trl_logits = torch.load(Path(work)/'trl_logits.pt')
    diff = float((trl_logits[:, :-1].float() - ours_logits.float()).abs().max())
    if diff > 1e-4: sys.exit(f"the two stacks disagree on the policy's logits (max |diff| {diff:.2e}); timing them would compare different models")
    out.update(logits_max_abs_diff=diff, trl011_step_seconds=round(trl['step_seconds'], 3),
               trl011_mean_response_tokens=round(trl['mean_response_tokens'], 2),
               step_time_ratio_ours_vs_trl011=round(statistics.median(ours) / trl['step_seconds'], 3), step_time_target=0.67,
               seconds=round(time.time() - t_start, 1))
    print(json.dumps(out))

if __name__ == '__main__': main()
