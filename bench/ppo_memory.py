"""Memory of one PPO step: the shared layout (one base + adapters) vs the naive four-copy layout (TRL PPOv2).

Same random-init GPT-NeoX (~100M parameters), batch 8, 128 prompt + 128 response tokens, gradient checkpointing in
both, one rollout + one optimizer update, each layout in its own subprocess.

- static = bytes of the unique parameter/buffer tensors of all models + the optimizer state after the step (counted,
  not sampled; no gradients, no activations).
- peak = on CPU the process's peak RSS (ru_maxrss) minus its RSS after imports; on CUDA torch.cuda.max_memory_allocated.

Real sizes (`--sizes`, by default all three polyglot-ko sizes when a CUDA GPU is at hand, none otherwise): the shared
layout on a random-init GPT-NeoX of polyglot-ko's shape whose linear layers are 4-bit NF4 (double quantization), built on
the meta device and quantized one matrix at a time (no multi-GB checkpoint is written or read), random LoRA adapters of
the SFT/RM shape; the same PPO step (batch 8, 128 + 128 tokens, gradient checkpointing) under
`torch.cuda.set_per_process_memory_fraction` at `--cap-gb` (40) -> peak VRAM per size, or `fits: false` on out-of-memory.
Targets: polyglot-ko-12.8b fits under the cap (the DnF project ran out of memory there; DeepSpeed-Chat's single
A100-40G limit is 6.7B) and polyglot-ko-1.3b peaks under 8 GB. `--sizes smoke` runs a 2-layer shape through the same
code on CPU (bitsandbytes 4-bit works on CPU), so the path is tested without a GPU.

Usage: python bench/ppo_memory.py [--layers 12 --hidden 768 --vocab 8000] [--sizes polyglot-ko-1.3b,...] [--only-sizes].
Last line: one JSON object.
"""
import argparse, json, os, resource, subprocess, sys, tempfile, time
from pathlib import Path

SIZES = {  # EleutherAI/polyglot-ko-* config.json: layers, hidden, attention heads, vocabulary (intermediate = 4 x hidden)
    'polyglot-ko-1.3b': (24, 2048, 16, 30080),
    'polyglot-ko-5.8b': (28, 4096, 16, 30080),
    'polyglot-ko-12.8b': (40, 5120, 40, 30080),
    'smoke': (2, 256, 4, 8000),  # the same code on a laptop CPU
}

def neox_config(a, heads:int|None=None):
    from transformers import GPTNeoXConfig
    return GPTNeoXConfig(vocab_size=a.vocab, hidden_size=a.hidden, num_hidden_layers=a.layers, num_attention_heads=heads or a.hidden // 64,
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

def size_config(size:str):
    "The GPT-NeoX config of one of `SIZES`."
    from types import SimpleNamespace
    layers, hidden, heads, vocab = SIZES[size]
    return neox_config(SimpleNamespace(layers=layers, hidden=hidden, vocab=vocab), heads)

def quantized_neox(cfg, device:str, dtype):
    "A random-init GPT-NeoX of `cfg` whose decoder linear layers are 4-bit NF4 (double quantization): built on the meta device, one matrix generated and quantized at a time."
    import torch, bitsandbytes as bnb
    from torch import nn
    from transformers import GPTNeoXForCausalLM
    torch.manual_seed(0)
    with torch.device('meta'): model = GPTNeoXForCausalLM(cfg)
    for layer in model.gpt_neox.layers:
        for parent in list(layer.modules()):
            for name, lin in list(parent.named_children()):
                if not isinstance(lin, nn.Linear): continue
                q = bnb.nn.Linear4bit(lin.in_features, lin.out_features, bias=lin.bias is not None, compute_dtype=dtype,
                                      compress_statistics=True, quant_type='nf4', device='meta')
                w = torch.randn(lin.out_features, lin.in_features, device=device, dtype=dtype) * 0.02
                q.weight = bnb.nn.Params4bit(w, requires_grad=False, compress_statistics=True, quant_type='nf4', module=q).to(device)
                if lin.bias is not None: q.bias = nn.Parameter(torch.zeros(lin.out_features, device=device, dtype=dtype), requires_grad=False)
                setattr(parent, name, q)
    for mod in model.modules():  # still on the meta device: embeddings, layer norms, the output layer
        for pname, p in list(mod.named_parameters(recurse=False)):
            if p.is_meta:
                t = torch.empty(p.shape, device=device, dtype=dtype)
                t = t.normal_(0, 0.02) if p.dim() > 1 else (t.fill_(1.0) if pname == 'weight' else t.zero_())
                setattr(mod, pname, nn.Parameter(t, requires_grad=False))
    model.gpt_neox.rotary_emb = type(model.gpt_neox.rotary_emb)(config=cfg).to(device)
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left: raise RuntimeError(f"still on the meta device: {left[:3]}")
    model.is_loaded_in_4bit = True  # what transformers' bitsandbytes loader sets; peft and prepare_model_for_kbit_training read it
    return model

def make_adapters(cfg, root):
    "Random SFT (CAUSAL_LM LoRA) and RM (SEQ_CLS LoRA + score head) adapters for a GPT-NeoX of `cfg`, saved under `root` (the base is built on the meta device: no weights)."
    import torch
    from torch import nn
    from peft import LoraConfig, get_peft_model
    from transformers import GPTNeoXForCausalLM, GPTNeoXForSequenceClassification
    from dnf_rlhf.models import LORA_TARGETS
    torch.manual_seed(0)
    for name, cls, task, extra in (('sft', GPTNeoXForCausalLM, 'CAUSAL_LM', {}),
                                   ('rm', GPTNeoXForSequenceClassification, 'SEQ_CLS', {'modules_to_save': ['score']})):
        with torch.device('meta'): base = cls(cfg)
        pm = get_peft_model(base, LoraConfig(r=16, lora_alpha=32, target_modules=LORA_TARGETS['gpt_neox'], task_type=task, **extra))
        for mod in pm.modules():  # the adapter's own tensors, random (not the zero init of lora_B: adapters that change the model)
            for pname, p in list(mod.named_parameters(recurse=False)):
                if p.requires_grad: setattr(mod, pname, nn.Parameter(torch.randn(p.shape) * 0.01))
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
    "One PPO step of layout `a.worker` ('shared', 'separate', or 'quantized': shared on a 4-bit model of `a.size`); prints one JSON line."
    import psutil, torch
    import peft, transformers.generation.utils  # noqa: F401  (imported before the baseline RSS is read)
    from transformers import GPTNeoXForCausalLM, GPTNeoXForSequenceClassification  # noqa: F401
    from types import SimpleNamespace
    from dataclasses import replace
    from dnf_rlhf.core import PRESETS, RolloutShape, Run
    from dnf_rlhf.ppo import AdaptiveKLController, build_layout, ppo_step
    cuda = torch.cuda.is_available()
    device = 'cuda' if cuda else 'cpu'
    rss0 = psutil.Process().memory_info().rss
    if a.worker == 'quantized':
        dtype = (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16) if cuda else torch.float32
        if cuda: torch.cuda.set_per_process_memory_fraction(min(1.0, a.cap_gb * 2**30 / torch.cuda.get_device_properties(0).total_memory))
        cfg_ = size_config(a.size)
        kind, load_model, vocab = 'shared', lambda kind: quantized_neox(cfg_, device, dtype), cfg_.vocab_size
    else: kind, load_model, vocab = a.worker, model_factory(a, device), a.vocab
    if cuda: torch.cuda.reset_peak_memory_stats()
    t0 = time.time()
    try:
        layout = build_layout(kind, load_model, Path(a.root)/'sft', Path(a.root)/'rm', 'zero', gradient_checkpointing=True)
        weights = tensor_bytes(list(layout.parameters()) + list(layout.buffers()))
        trainable = layout.trainable()
        opt = torch.optim.AdamW(list(trainable.values()), lr=1e-5, eps=1e-5)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1.0)
        shape = RolloutShape(batch_size=a.batch, minibatch_size=a.batch, max_prompt_len=a.prompt, max_new_tokens=a.response)
        run = Run(replace(PRESETS['colab-t4'], ppo=shape), overrides={'ppo': dict(ppo_epochs=1, micro_batch_size=a.batch,
                                                                                   temperature=1.0)})
        tok = SimpleNamespace(pad_token_id=0, eos_token_id=1)
        g = torch.Generator().manual_seed(0)
        q = torch.randint(2, vocab, (a.batch, a.prompt), generator=g)
        batch = dict(query_ids=q, query_mask=torch.ones_like(q), rm_ids=q.clone(), rm_mask=torch.ones_like(q))
        torch.manual_seed(0)
        t1 = time.time()
        metrics, ro = ppo_step(layout, tok, batch, run, AdaptiveKLController(0.05, 6.0), opt, sched, {'mean': 0.0, 'std': 1.0})
        secs = time.time() - t1
    except torch.cuda.OutOfMemoryError as e:
        print(json.dumps(dict(layout=a.worker, size=a.size, device=device, fits=False, cap_gb=a.cap_gb, error=str(e)[:300],
                              peak_bytes=torch.cuda.max_memory_allocated(), seconds=round(time.time() - t0, 1))))
        return
    optimizer = tensor_bytes([v for st in opt.state.values() for v in st.values() if torch.is_tensor(v)])
    peak = torch.cuda.max_memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss0
    print(json.dumps(dict(layout=a.worker, size=a.size, device=device, fits=True, params=sum(p.numel() for p in layout.parameters()),
                          trainable_params=sum(p.numel() for p in trainable.values()), weight_bytes=weights,
                          optimizer_bytes=optimizer, static_bytes=weights + optimizer, peak_bytes=peak,
                          peak_kind='cuda.max_memory_allocated' if cuda else 'ru_maxrss - rss_after_imports',
                          step_seconds=round(secs, 2), response_tokens=int(ro['resp_mask'].sum()), kl=metrics['ppo/kl'],
                          seconds=round(time.time() - t0, 1))))

def run_worker(args:list[str]) -> dict:
    "Run this script as a worker subprocess (a fresh process per measurement) and return its JSON line."
    p = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, timeout=3600)
    if p.returncode: sys.exit(f"worker {args[:4]} failed:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--layers', type=int, default=12); ap.add_argument('--hidden', type=int, default=768)
    ap.add_argument('--vocab', type=int, default=8000); ap.add_argument('--batch', type=int, default=8)
    ap.add_argument('--prompt', type=int, default=128); ap.add_argument('--response', type=int, default=128)
    ap.add_argument('--sizes', default=None, help=f"comma-separated, of {sorted(SIZES)} (default: the polyglot-ko sizes on CUDA, none on CPU)")
    ap.add_argument('--cap-gb', type=float, default=40.0, help='GPU memory cap of the --sizes runs')
    ap.add_argument('--only-sizes', action='store_true', help='skip the shared-vs-naive comparison')
    ap.add_argument('--worker', default=None, help=argparse.SUPPRESS); ap.add_argument('--root', default=None, help=argparse.SUPPRESS)
    ap.add_argument('--size', default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker: return worker(a)
    import torch
    t0 = time.time()
    shape_args = sum(([f'--{k}', str(getattr(a, k))] for k in ('layers', 'hidden', 'vocab', 'batch', 'prompt', 'response')), [])
    out = dict(bench='ppo_memory', device='cuda' if torch.cuda.is_available() else 'cpu', batch=a.batch, prompt_tokens=a.prompt,
               response_tokens=a.response, gradient_checkpointing=True)
    if not a.only_sizes:
        res = {}
        with tempfile.TemporaryDirectory() as root:
            make_adapters(neox_config(a), Path(root))
            for layout in ('shared', 'separate'):
                res[layout] = run_worker(['--worker', layout, '--root', root, *shape_args])
                print(layout, res[layout], flush=True)
        s, n = res['shared'], res['separate']
        out.update(params_shared_layout=s['params'], params_naive_layout=n['params'],
                   model=f"GPT-NeoX {a.layers} layers, hidden {a.hidden}, vocab {a.vocab}, random init",
                   static_definition='unique parameter+buffer bytes of all models + optimizer state bytes (counted)',
                   peak_definition=s['peak_kind'],
                   static_mb_shared=round(s['static_bytes'] / 2**20, 1), static_mb_naive=round(n['static_bytes'] / 2**20, 1),
                   peak_mb_shared=round(s['peak_bytes'] / 2**20, 1), peak_mb_naive=round(n['peak_bytes'] / 2**20, 1),
                   static_ratio_shared_vs_naive=round(s['static_bytes'] / n['static_bytes'], 4),
                   peak_ratio_shared_vs_naive=round(s['peak_bytes'] / n['peak_bytes'], 4),
                   trainable_params_shared=s['trainable_params'], trainable_params_naive=n['trainable_params'],
                   step_seconds_shared=s['step_seconds'], step_seconds_naive=n['step_seconds'],
                   static_target=0.35, static_ok=s['static_bytes'] / n['static_bytes'] <= 0.35)
    sizes = a.sizes.split(',') if a.sizes else [k for k in SIZES if k != 'smoke'] if torch.cuda.is_available() else []
    if unknown := set(sizes) - set(SIZES): sys.exit(f"unknown --sizes {sorted(unknown)}; choose from {sorted(SIZES)}")
    if not sizes: out['sizes'] = 'not run: no CUDA GPU (--sizes smoke runs the 4-bit code path on CPU)'
    else:
        out['sizes'], out['cap_gb'] = {}, a.cap_gb
        for size in sizes:
            with tempfile.TemporaryDirectory() as root:
                make_adapters(size_config(size), Path(root))
                r = run_worker(['--worker', 'quantized', '--size', size, '--root', root, '--cap-gb', str(a.cap_gb), *shape_args])
            print(size, r, flush=True)
            out['sizes'][size] = dict(fits=r['fits'], peak_gb=round(r['peak_bytes'] / 2**30, 2), peak_kind=r.get('peak_kind'),
                                      params=r.get('params'), step_seconds=r.get('step_seconds'), seconds=r['seconds'])
        got = out['sizes']
        if 'polyglot-ko-12.8b' in got: out['fits_12_8b_under_cap'] = got['polyglot-ko-12.8b']['fits']
        if 'polyglot-ko-1.3b' in got: out['peak_1_3b_under_8gb'] = got['polyglot-ko-1.3b']['fits'] and got['polyglot-ko-1.3b']['peak_gb'] < 8
    out['seconds'] = round(time.time() - t0, 1)
    print(json.dumps(out))

if __name__ == '__main__': main()
