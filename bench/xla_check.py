"""XLA compilations per step of the `test`-size SFT, RM and PPO steps on an XLA device (run by bench/xla_check.sh).

XLA compiles a graph for every new tensor shape; a step whose shapes depend on the data compiles again and again. With
fixed shapes (`Policy.fixed_shapes`) PPO pads prompts to a few widths, generates exactly `max_new_tokens` with a static
KV cache, and keeps every micro-batch one shape: after the first step, no step should compile anything new.

- PPO: `ppo.ppo_step` itself (rollout, RM scores, clipped updates) on the layout `load_layout` builds, fixed shapes.
- SFT and RM, two ways: (1) one optimizer step of each model's loss (the causal-LM loss on answer tokens; the
  pairwise loss -log sigmoid(r_chosen - r_rejected)) on batches padded to `max_len`, as the trainers'
  `pad_to_multiple_of` pads them under fixed shapes; the LoRA adapter trained, AdamW; (2) TRL's own loop, `train_sft`
  and `train_rm` themselves, counted from one optimizer step's start to the next's (a step's update graph compiles
  when the next batch is fetched), no evaluation between steps, 20 steps: the trainers log the loss every
  `logging_steps` (SFT 5, RM 10) and the first logging step compiles that reduction once; the second must compile nothing.

Usage: python bench/xla_check.py --build   (alone, USE_TORCH_XLA=0: builds the cached SFT and RM on the CPU)
       PJRT_DEVICE=CPU python bench/xla_check.py [--steps 5]   Last line: one JSON object.
"""
import argparse, json, math, sys, tempfile, time
from dataclasses import replace
import torch
import torch.nn.functional as F
from dnf_rlhf.core import PRESETS, Policy, Run, set_seed

def compiles() -> int:
    "XLA compilations so far (torch_xla's CompileTime metric)."
    import torch_xla.debug.metrics as met
    data = met.metric_data('CompileTime')
    return data[0] if data else 0

def per_step(fn, steps:int) -> tuple[list[int], list[float], list]:
    "(compilations added by each of `steps` calls of `fn(i)`, seconds of each, what each returned)."
    import torch_xla
    counts, secs, outs = [], [], []
    for i in range(steps):
        c, t = compiles(), time.time()
        outs.append(fn(i)); torch_xla.sync()
        counts.append(compiles() - c); secs.append(round(time.time() - t, 2))
    return counts, secs, outs

def ppo_steps(run:Run, steps:int) -> dict:
    "`ppo_step` on the XLA device: compilations, seconds and finiteness of each step."
    from dnf_rlhf.formats import PPORecord, read_jsonl
    import torch_xla
    from dnf_rlhf.ppo import batch_indices, encode_queries, kl_controller, load_layout, ppo_step, step_seed
    cfg, shape = run.cfg('ppo'), run.preset.ppo
    layout, tok, norm = load_layout(run)
    torch_xla.sync()  # what loading left lazy is not part of step 0
    train = read_jsonl(run.project.datasets_path()/'ppo_train.jsonl', PPORecord)
    opt = torch.optim.AdamW(list(layout.trainable().values()), lr=cfg.lr, eps=1e-5, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1.0)
    kl_ctl = kl_controller(cfg, shape)
    def step(i):
        set_seed(step_seed(cfg.seed, i))
        idx, _ = batch_indices(len(train), i, shape.batch_size, cfg.seed)
        batch = encode_queries(tok, [train[j] for j in idx], run)
        return ppo_step(layout, tok, batch, run, kl_ctl, opt, sched, norm)[0]
    counts, secs, metrics = per_step(step, steps)
    return dict(compiles=counts, seconds=secs, finite=all(math.isfinite(v) for m in metrics for v in m.values()),
                reward=[round(m['ppo/reward'], 3) for m in metrics], kl=[round(m['ppo/kl'], 3) for m in metrics],
                fixed=layout.fixed)

def padded(seqs:list[list[int]], pad_id:int, width:int) -> tuple[torch.Tensor, torch.Tensor]:
    "Right-padded (ids, mask) (B, width), each list cut to `width`."
    seqs = [s[:width] for s in seqs]
    return (torch.tensor([s + [pad_id] * (width - len(s)) for s in seqs]),
            torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs]))

def loss_steps(run:Run, kind:str, steps:int) -> dict:
    "One AdamW step per call of the SFT (`kind='sft'`) or RM loss on the trained adapter, on the XLA device."
    from peft import PeftModel
    from dnf_rlhf.models import load_pretrained
    from dnf_rlhf.sft import load_sft_splits, tokenize_records
    from dnf_rlhf.reward import load_pairs, tokenize_pairs
    shape = getattr(run.preset, kind)
    model, tok, _ = load_pretrained(run, head='causal' if kind == 'sft' else 'score')
    model = PeftModel.from_pretrained(model, str(run.artifact(kind)/'adapter'), is_trainable=True)
    B, W, dev = shape.batch_size, shape.max_len, next(model.parameters()).device
    data = (tokenize_records(load_sft_splits(run.project)['train'][:B * steps], tok, run)[0] if kind == 'sft' else
            tokenize_pairs(load_pairs(run.project, 'train')[:B * steps], tok, run))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    model.train()
    def step(i):
        rows = data[i * B:(i + 1) * B]
        if kind == 'sft':
            ids, mask = padded(rows['input_ids'], tok.pad_token_id, W)
            answer, _ = padded(rows['completion_mask'], 0, W)
            labels = torch.where((answer * mask).bool(), ids, -100)
            loss = model(input_ids=ids.to(dev), attention_mask=mask.to(dev), labels=labels.to(dev)).loss
        else:  # chosen and rejected in one (2B, W) batch
            ids, mask = padded(rows['chosen_ids'] + rows['rejected_ids'], tok.pad_token_id, W)
            r = model(input_ids=ids.to(dev), attention_mask=mask.to(dev)).logits.squeeze(-1).float()  # (2B,)
            loss = -F.logsigmoid(r[:B] - r[B:]).mean()
        loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)
        return loss
    counts, secs, losses = per_step(step, steps)
    return dict(compiles=counts, seconds=secs, finite=all(math.isfinite(l.item()) for l in losses))

def trainer_steps(run:Run, kind:str, steps:int) -> dict:
    "TRL's loop on the XLA device (`train_sft` or `train_rm`, steps + 1 optimizer steps): compilations of each step."
    from transformers import TrainerCallback
    from dnf_rlhf.sft import train_sft
    from dnf_rlhf.reward import train_rm
    marks, log = [], {}  # (compilations, time) at each step's start; the trainer's logging interval
    class Mark(TrainerCallback):
        def on_step_begin(self, args, *rest, **kwargs):
            marks.append((compiles(), time.time())); log['steps'] = args.logging_steps
    over = {kind: dict(max_steps=steps + 1, **({'eval_steps': 10 * steps} if kind == 'sft' else {}))}
    with tempfile.TemporaryDirectory() as d:
        m = (train_sft if kind == 'sft' else train_rm)(d, replace(run, overrides=over), callbacks=[Mark()])
    return dict(compiles=[b[0] - a[0] for a, b in zip(marks, marks[1:])],
                seconds=[round(b[1] - a[1], 2) for a, b in zip(marks, marks[1:])],
                logging_steps=log['steps'], finite=all(math.isfinite(v) for v in m.values() if isinstance(v, float)))

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--steps', type=int, default=5, help='steps of each kind')
    ap.add_argument('--build', action='store_true', help='build the cached test-size SFT and RM on the CPU, then stop')
    a = ap.parse_args()
    if a.build:
        Run(PRESETS['test'], policy=Policy('cpu', 'fp32', None, False, False)).artifact('rm')
        return
    import torch_xla
    run = Run(PRESETS['test'], policy=Policy('xla', 'fp32', None, False, True))  # fp32: the CPU has no fast bf16 XLA
    t0 = time.time()
    out = dict(check='xla', device=str(torch_xla.device()), torch=torch.__version__, torch_xla=torch_xla.__version__,
               ppo=ppo_steps(run, a.steps), sft=loss_steps(run, 'sft', a.steps), rm=loss_steps(run, 'rm', a.steps),
               sft_trl=trainer_steps(run, 'sft', 20), rm_trl=trainer_steps(run, 'rm', 20))
    kinds = ('ppo', 'sft', 'rm', 'sft_trl', 'rm_trl')
    # PPO: nothing new after step 1; SFT and RM: after step 2 (step 2 compiles the update with AdamW's state as
    # inputs); in TRL's loop the first logging step also compiles its loss reduction, once
    first_log = lambda k: out[k]['compiles'][out[k]['logging_steps'] - 1] if k.endswith('_trl') else 0
    later = lambda k: sum(out[k]['compiles'][1:]) if k == 'ppo' else sum(out[k]['compiles'][2:]) - first_log(k)
    out['ok'] = bool(all(later(k) == 0 and out[k]['finite'] for k in kinds))
    out['seconds'] = round(time.time() - t0, 1)
    print(json.dumps(out))
    sys.exit(0 if out['ok'] else 1)

if __name__ == '__main__': main()
