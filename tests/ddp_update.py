"""PPO's update on a fixed rollout, alone or as one of `torchrun`'s processes (run by tests/test_distributed.py).

    python tests/ddp_update.py ROLLOUT OUT   # alone: samples ROLLOUT (4 prompts) if absent, updates on all 4 rows
    torchrun --standalone --nproc_per_node 2 tests/ddp_update.py ROLLOUT OUT   # each process: its 2 rows of ROLLOUT

SGD with learning rate 1 and no gradient clipping, so each trainable weight moves by minus its gradient: OUT (written by
the main process) holds those moves and the step's metrics. The `test`-size SFT and RM come from the artifact cache."""
import sys
from dataclasses import replace
from pathlib import Path
import torch
from dnf_rlhf.core import PRESETS, Run, rank_world, is_main_process, set_seed
from dnf_rlhf.formats import PPORecord, read_jsonl
from dnf_rlhf.ppo import (AdaptiveKLController, encode_queries, load_layout, loss_scaler, ppo_accelerator, ppo_update,
                          rollout, score_responses, to_device)

ROWS = 4  # the global batch: one minibatch, one PPO epoch

def main(rollout_file:Path, out:Path):
    built = Run(PRESETS['test'])  # the cached SFT and RM
    preset = replace(built.preset, ppo=replace(built.preset.ppo, batch_size=ROWS, minibatch_size=ROWS))
    run = replace(built, preset=preset, overrides={'ppo': dict(ppo_epochs=1, micro_batch_size=1, max_grad_norm=1e9)})
    cfg = run.cfg('ppo')
    acc = ppo_accelerator(run)
    rank, world = rank_world()
    layout, tok, norm = load_layout(built)
    if not rollout_file.exists():  # alone: the rollout every run of this script then trains on
        assert world == 1, 'make the rollout with one process first'
        recs = read_jsonl(run.project.datasets_path()/'ppo_train.jsonl', PPORecord)[:ROWS]
        set_seed(0)
        batch = to_device(encode_queries(tok, recs, run), 'cpu')
        layout.eval()
        ro = rollout(layout, tok, batch, preset.ppo.max_new_tokens, cfg.temperature, cfg.micro_batch_size)
        scores, raw, fact = score_responses(layout, tok, batch, ro, norm, run)
        torch.save(dict(ro, scores=scores, raw=raw, fact=fact), rollout_file)
    ro = torch.load(rollout_file, weights_only=False)
    share = ROWS // world
    ro = {k: v[rank * share:(rank + 1) * share] if torch.is_tensor(v) else v for k, v in ro.items()}  # my rows
    before = {k: p.detach().clone() for k, p in layout.trainable().items()}
    opt = torch.optim.SGD(list(layout.trainable().values()), lr=1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1.0)
    model, opt = acc.prepare(layout, opt)
    set_seed(1)
    metrics, _ = ppo_update(model, ro, run, AdaptiveKLController(0.1, None), opt, sched, loss_scaler(run))
    if is_main_process():
        moved = {k: before[k] - p.detach() for k, p in layout.trainable().items()}  # = the averaged gradient
        torch.save(dict(metrics=metrics, grads=moved, world=world), out)

if __name__ == '__main__': main(Path(sys.argv[1]), Path(sys.argv[2]))
