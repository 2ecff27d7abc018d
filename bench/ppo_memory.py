"""Memory of one PPO step: the shared layout (one base + adapters) vs the naive four-copy layout (TRL PPOv2).

Same random-init GPT-NeoX (~100M parameters), batch 8, 128 prompt + 128 response tokens, gradient checkpointing in
both, one rollout + one optimizer update, each layout in its own subprocess.

- static = bytes of the unique parameter/buffer tensors of all models + the optimizer state after the step (counted,
  not sampled; no gradients, no activations).
- peak = on CPU the process's peak RSS (ru_maxrss) minus its RSS after imports; on CUDA torch.cuda.max_memory_allocated.

Usage: python bench/ppo_memory.py [--layers 12 --hidden 768 --vocab 8000]. Last line: one JSON object.
"""
import argparse, json, os, resource, subprocess, sys, tempfile, time
from pathlib import Path

def neox_config(a):
    from transformers import GPTNeoXConfig
    return GPTNeoXConfig(vocab_size=a.vocab, hidden_size=a.hidden, num_hidden_layers=a.layers, num_attention_heads=a.hidden // 64,
                         intermediate_size=4 * a.hidden, rotary_pct=0.5, max_position_embeddings=512, use_parallel_residual=True,
                         tie_word_embeddings=False, bos_token_id=1, eos_token_id=1, pad_token_id=0, hidden_dropout=0.0,
                         attention_dropout=0.0, num_labels=1)

def model_factory(a, device):
    "load_model(kind) for build_layout: the same random weights for every copy (seeded)."
    import torch
    from transformers import GPTNeoXForCausalLM, GPTNeoXForSequenceClassification
    cfg = neox_config(a)
    def load_model(kind):
        torch.manual_seed(0)
        m = GPTNeoXForCausalLM(cfg) if kind == 'causal' else GPTNeoXForSequenceClassification(cfg)
        return m.to(device)
    return load_model

def make_adapters(a, root):
    "A random SFT adapter (CAUSAL_LM LoRA) and RM adapter (SEQ_CLS LoRA + score head) saved under `root`."
    import torch
    from peft import LoraConfig, get_peft_model
    from dnf_rlhf.sft import LORA_TARGETS
    load = model_factory(a, 'cpu')
    for name, kind, task, extra in (('sft', 'causal', 'CAUSAL_LM', {}), ('rm', 'seq_cls', 'SEQ_CLS', {'modules_to_save': ['score']})):
        pm = get_peft_model(load(kind), LoraConfig(r=16, lora_alpha=32, target_modules=LORA_TARGETS['gpt_neox'], task_type=task, **extra))
        with torch.no_grad():
            for n, p in pm.named_parameters():
                if 'lora_B' in n or 'score' in n: p.normal_(0, 0.01)  # not the zero init: adapters that change the model
        pm.save_pretrained(root/name)
        del pm

def tensor_bytes(tensors) -> int:
    "Bytes of the unique storages among `tensors`."
    seen, total = set(), 0
    for t in tensors:
        key = (t.device, t.untyped_storage().data_ptr())
        if key in seen: continue
        seen.add(key); total += t.untyped_storage().nbytes()
    return total

def worker(a):
    import psutil, torch
    import peft, transformers.generation.utils  # noqa: F401  (imported before the baseline RSS is read)
    from transformers import GPTNeoXForCausalLM, GPTNeoXForSequenceClassification  # noqa: F401
    from types import SimpleNamespace
    from dnf_rlhf.core import RolloutShape
    from dnf_rlhf.ppo import PPOStageConfig, AdaptiveKLController, build_layout, ppo_step
    cuda = torch.cuda.is_available()
    device = 'cuda' if cuda else 'cpu'
    rss0 = psutil.Process().memory_info().rss
    layout = build_layout(a.worker, model_factory(a, device), Path(a.root)/'sft', Path(a.root)/'rm', 'zero', gradient_checkpointing=True)
    weights = tensor_bytes(list(layout.parameters()) + list(layout.buffers()))
    trainable = layout.trainable()
    opt = torch.optim.AdamW(list(trainable.values()), lr=1e-5, eps=1e-5)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1.0)
    shape = RolloutShape(batch_size=a.batch, minibatch_size=a.batch, max_prompt_len=a.prompt, max_new_tokens=a.response)
    cfg = PPOStageConfig(ppo_epochs=1, micro_batch_size=a.batch, temperature=1.0)
    tok = SimpleNamespace(pad_token_id=0, eos_token_id=1)
    g = torch.Generator().manual_seed(0)
    q = torch.randint(2, a.vocab, (a.batch, a.prompt), generator=g)
    batch = dict(query_ids=q, query_mask=torch.ones_like(q), rm_ids=q.clone(), rm_mask=torch.ones_like(q))
    if cuda: torch.cuda.reset_peak_memory_stats()
    torch.manual_seed(0)
    t0 = time.time()
    metrics, ro = ppo_step(layout, tok, batch, cfg, shape, AdaptiveKLController(0.05, 6.0), opt, sched, {'mean': 0.0, 'std': 1.0})
    secs = time.time() - t0
    optimizer = tensor_bytes([v for st in opt.state.values() for v in st.values() if torch.is_tensor(v)])
    peak = torch.cuda.max_memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss0
    print(json.dumps(dict(layout=a.worker, device=device, params=sum(p.numel() for p in layout.parameters()),
                          trainable_params=sum(p.numel() for p in trainable.values()), weight_bytes=weights,
                          optimizer_bytes=optimizer, static_bytes=weights + optimizer, peak_bytes=peak,
                          peak_kind='cuda.max_memory_allocated' if cuda else 'ru_maxrss - rss_after_imports',
                          step_seconds=round(secs, 2), response_tokens=int(ro['resp_mask'].sum()), kl=metrics['ppo/kl'])))

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--layers', type=int, default=12); ap.add_argument('--hidden', type=int, default=768)
    ap.add_argument('--vocab', type=int, default=8000); ap.add_argument('--batch', type=int, default=8)
    ap.add_argument('--prompt', type=int, default=128); ap.add_argument('--response', type=int, default=128)
    ap.add_argument('--worker', default=None, help=argparse.SUPPRESS); ap.add_argument('--root', default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker: return worker(a)
    t0 = time.time()
    with tempfile.TemporaryDirectory() as root:
        make_adapters(a, Path(root))
        res = {}
        for layout in ('shared', 'separate'):
            p = subprocess.run([sys.executable, __file__, '--worker', layout, '--root', root, *sum(([f'--{k}', str(getattr(a, k))]
                                for k in ('layers', 'hidden', 'vocab', 'batch', 'prompt', 'response')), [])],
                               capture_output=True, text=True, timeout=3600)
            if p.returncode: sys.exit(f"{layout} worker failed:\n{p.stderr[-3000:]}")
            res[layout] = json.loads(p.stdout.strip().splitlines()[-1])
            print(layout, res[layout], flush=True)
    s, n = res['shared'], res['separate']
    out = dict(bench='ppo_memory', device=s['device'], params_shared_layout=s['params'], params_naive_layout=n['params'],
               model=f"GPT-NeoX {a.layers} layers, hidden {a.hidden}, vocab {a.vocab}, random init", batch=a.batch, prompt_tokens=a.prompt,
               response_tokens=a.response, gradient_checkpointing=True,
               static_definition='unique parameter+buffer bytes of all models + optimizer state bytes (counted)',
               peak_definition=s['peak_kind'],
               static_mb_shared=round(s['static_bytes'] / 2**20, 1), static_mb_naive=round(n['static_bytes'] / 2**20, 1),
               peak_mb_shared=round(s['peak_bytes'] / 2**20, 1), peak_mb_naive=round(n['peak_bytes'] / 2**20, 1),
               static_ratio_shared_vs_naive=round(s['static_bytes'] / n['static_bytes'], 4),
               peak_ratio_shared_vs_naive=round(s['peak_bytes'] / n['peak_bytes'], 4),
               trainable_params_shared=s['trainable_params'], trainable_params_naive=n['trainable_params'],
               step_seconds_shared=s['step_seconds'], step_seconds_naive=n['step_seconds'],
               static_target=0.35, static_ok=s['static_bytes'] / n['static_bytes'] <= 0.35,
               gpu_sizes='not run: needs a CUDA GPU (polyglot-ko 1.3B/5.8B/12.8B 4-bit shapes are not implemented in this bench)',
               seconds=round(time.time() - t0, 1))
    print(json.dumps(out))

if __name__ == '__main__': main()
