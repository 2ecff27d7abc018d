"""GPU check: a Colab GPU preset's pipeline (`colab-t4` by default) on a real-size random-weight polyglot-ko-1.3b
stand-in, under that GPU's memory (a T4's 15 GiB, an L4's 22, an A100's 40).

What runs (no hub, no network; one run folder, stages in pipeline order, each reading the one before):

- build: `standin_base('polyglot-ko', size='polyglot-ko-1.3b', dtype=fp16)` into a temp folder (on the GPU when there is
  one: random init of 1.3B parameters on a CPU is slow), then freed.
- sft: `train_sft` 10 optimizer steps (eval + checkpoint every 5), 8 held-out prompts answered.
- rm: `train_rm` 10 steps, diagnostics, reward normalisation on 8 SFT samples.
- ppo: `train_ppo` 3 steps (shared layout, the default PPO config otherwise), before/after on 8 prompts.
- ppo_fact: the same PPO with the fact reward added to the RM's (its settings start from ppo's).
- dpo: `train_dpo` 5 steps on the preference pairs (the SFT adapter its own reference), loss on 32 held-out pairs.
- grpo, rloo: `train_grpo` / `train_rloo` 3 steps of 2 prompts x 4 answers (RM + fact reward), 4 questions before/after.
- eval: the `eval` stage on 8 prompts (4 fact, 2 persona, 2 hostile), 64-token answers, judge off; the methods table
  (SFT, PPO, PPO + fact, DPO, GRPO, RLOO with KL to SFT).
- serve: 4 chat requests through the real server on 127.0.0.1 with the real `openai` client.

Settings forced with the existing knobs: `get_preset('colab-t4').with_base(<stand-in>)` (fp16, NF4, gradient
checkpointing and the T4 batch shapes: SFT/RM 4 x 4 x 512, PPO 16/4, 256 + 128 tokens; `--preset colab-l4` or
`colab-a100`: bf16 and their shapes), stage settings overridden
as `--set` does (`Run(preset, overrides={'sft': {'max_steps': 10, ...}})`), the policy from `device_policy`, and
`torch.cuda.set_per_process_memory_fraction(cap / total)`. Per stage: seconds and peak memory
(`torch.cuda.max_memory_allocated`, reset before each stage).

The datasets are the demo data trimmed (ProjectConfig.datasets_dir -> a temp copy: fewer reward-model pairs and test
rows) so the stages' diagnostics stay within the time budget; the training and rollout shapes are the preset's.

No retrieval packages: kiwipiepy, bm25s and faiss are blocked (`sys.modules[name] = None`; importing one fails). The
evaluation always retrieves (`evaluate` -> `eval_retriever`, a Kiwi + BM25 (+ FAISS) index, no switch to turn it
off), so here `dnf_rlhf.evaluate.eval_retriever` is replaced by a stand-in that returns the lore chunks sharing the
most character bigrams with the question, and `dnf_rlhf.rag.best_window` (Kiwi morphemes) by the plain token-prefix
cut: the '+rag' systems get real lore passages, chosen without Kiwi/BM25/FAISS. When matplotlib is not installed (or
with `--stub-matplotlib`) a no-op stand-in is used: plots are not drawn. Both are listed in the JSON line.

    python bench/gpu_check.py            # the GPU check (a CUDA GPU is required; about 5 minutes)
    python bench/gpu_check.py --preset colab-l4   # the bf16 path, under an L4's 22 GiB
    python bench/gpu_check.py --smoke    # the same code on CPU: 'tiny' stand-in, the rehearsal's shapes and steps

Measured 2026-12-04 on one H200 (torch 2.11.0+cu130, transformers 5.17.0, peft 0.21.0, trl 1.16.0, bitsandbytes
0.50.2), total / per stage seconds, peak allocated GiB: colab-t4 182 s (sft 60 s 2.10, rm 35 s 2.06, ppo 37 s 1.99,
eval 24 s 3.10, serve 5 s 1.01); colab-l4 151 s (sft 34 s 2.63, rm 19 s 2.06, ppo 52 s 2.56, eval 21 s 3.58, serve
6 s). Before `sft.fp32_trainable`, colab-t4 stopped at SFT's first optimizer step (bf16 adapters under fp16 AMP).

Measured 2026-12-05 on one H100 80GB (same versions; the nine stages above, `bash tools/gpu_check_run.sh --preset P
--budget-s S`), seconds, peak allocated GiB: colab-t4 277 s, all stages ok (build 18 s; sft 67 s 2.10, rm 32 s 2.06,
ppo 30 s 1.99 with loss scale 65536 and no skipped update, ppo_fact 29 s 1.99, dpo 19 s 2.01, grpo 24 s 1.90, rloo 14 s
1.90, eval 34 s 4.93, serve 3 s 1.01); colab-l4 254 s, all ok (sft 36 s 2.10, rm 19 s 2.05, ppo 48 s 2.56, ppo_fact
40 s 2.56, dpo 11 s 2.19, grpo 18 s 1.90, rloo 15 s 1.90, eval 45 s 4.93, serve 4 s 1.01); colab-a100 (bf16, SFT/RM
16 x 1024, PPO 64/16 with 384 + 192 tokens, 40 GiB cap) ran sft 16 s 2.98, rm 12 s 2.21, ppo 67 s 3.63, ppo_fact 65 s
3.63, dpo 6 s 3.00, grpo 16 s 1.90, rloo 15 s 1.90, then reached the 245 s budget given at the start of eval (not run).

The last line printed is one JSON object: device, gpu, capability, torch, stages {name: {seconds, peak_gb, ...}}, ok,
error (and failed_stage, build, policy, shapes, versions, blocked, stubbed, the dnf_rlhf modules imported). On any
exception (or past `--budget-s`, 360 s by default on the GPU) the JSON line still comes, with "ok": false, and the
exit status is 1. On the GPU machine (no network): `bash tools/gpu_check_run.sh` installs the wheels that
`tools/gpu_wheels.sh` gathered into .gpu_wheels/, then runs this check.
"""
import argparse, dataclasses, importlib.machinery, importlib.util, json, os, shutil, signal, sys, tempfile, time, traceback, types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's dnf_rlhf, installed or not
for k, v in dict(HF_HUB_OFFLINE='1', HF_DATASETS_OFFLINE='1', TRANSFORMERS_OFFLINE='1', MPLBACKEND='Agg',
                 TOKENIZERS_PARALLELISM='false', TRANSFORMERS_NO_ADVISORY_WARNINGS='1').items():
    os.environ.setdefault(k, v)

RETRIEVAL = ('kiwipiepy', 'bm25s', 'faiss')  # not installed on the GPU machine: the check must not need them
STAGES = ('sft', 'rm', 'ppo', 'ppo_fact', 'dpo', 'grpo', 'rloo', 'eval', 'serve')
GiB = 2**30
CAPS_GB = {'colab-t4': 15.0, 'colab-l4': 22.0, 'colab-a100': 40.0}  # usable memory of each preset's GPU

@dataclasses.dataclass(frozen=True)
class Sizes:
    "How much of each stage runs."
    standin: str  # STANDIN_SIZES key
    sft_steps: int
    sft_eval_steps: int
    rm_steps: int
    ppo_steps: int
    dpo_steps: int
    group_steps: int  # GRPO and RLOO steps, 2 prompts x 4 answers each
    prompts: int  # held-out prompts: SFT's check, RM normalisation samples, evaluation (4 fact + 2 persona + 2 hostile)
    ppo_eval_prompts: int  # PPO's before/after report (4 answer sets + one rollout each)
    eval_tokens: int|None  # answer length in the evaluation (None: EvalStageConfig's)
    requests: int  # chat requests to the server
    max_tokens: int  # per chat request
    keep: dict  # datasets file -> rows kept (None: all; 0: left out)

GPU = Sizes('polyglot-ko-1.3b', sft_steps=10, sft_eval_steps=5, rm_steps=10, ppo_steps=3, dpo_steps=5, group_steps=3,
            prompts=8,
            ppo_eval_prompts=8, eval_tokens=64, requests=4, max_tokens=32,
            keep=dict(sft_train=None, sft_test=32, pairs_train=512, ranked_train=32, pairs_test=96, ranked_test=16, ppo_train=None,
                      ppo_test=None, retrieval_train=None, retrieval_test=None))
SMOKE = Sizes('tiny', sft_steps=4, sft_eval_steps=2, rm_steps=4, ppo_steps=2, dpo_steps=2, group_steps=1, prompts=8,
              ppo_eval_prompts=4,
              eval_tokens=None, requests=4, max_tokens=8,
              keep=dict(sft_train=160, sft_test=8, pairs_train=64, ranked_train=0, pairs_test=32, ranked_test=0, ppo_train=32,
                        ppo_test=None, retrieval_train=None, retrieval_test=None))

# ---------------------------------------------------------------------------------------------------------------------
def block_retrieval():
    "Make `import kiwipiepy` (bm25s, faiss) fail here, as on the GPU machine where they are not installed."
    for m in RETRIEVAL: sys.modules[m] = None  # import -> ImportError; importlib.util.find_spec -> None
    return list(RETRIEVAL)

def stub_matplotlib(force:bool=False) -> bool:
    "A no-op `matplotlib` (+ pyplot) when it is not installed (or `force`): the stages' plots are skipped. True when stubbed."
    if not force and importlib.util.find_spec('matplotlib') is not None: return False
    from unittest import mock
    def mod(name):
        m = types.ModuleType(name); m.__spec__ = importlib.machinery.ModuleSpec(name, None); return m
    mpl, plt = mod('matplotlib'), mod('matplotlib.pyplot')
    mpl.use = lambda *a, **k: None
    def subplots(nrows=1, ncols=1, **kw):
        n = nrows * ncols
        return mock.MagicMock(), (mock.MagicMock() if n == 1 else [mock.MagicMock() for _ in range(n)])
    plt.subplots, plt.close, plt.figure = subplots, (lambda *a, **k: None), (lambda *a, **k: mock.MagicMock())
    mpl.pyplot = plt
    sys.modules.update({'matplotlib': mpl, 'matplotlib.pyplot': plt})
    return True

def trimmed_project(dst:Path, keep:dict):
    "A ProjectConfig on a copy of the demo datasets with the first `keep[name]` rows of each file."
    from dnf_rlhf.core import ProjectConfig
    src = ProjectConfig().datasets_path()
    dst.mkdir(parents=True, exist_ok=True)
    for name, n in keep.items():
        f = src/f'{name}.jsonl'
        if not f.exists() or n == 0: continue
        lines = f.read_text(encoding='utf-8').splitlines(keepends=True)
        (dst/f.name).write_text(''.join(lines if n is None else lines[:n]), encoding='utf-8')
    return ProjectConfig(datasets_dir=str(dst))

class OverlapRetriever:
    "Stand-in for the Kiwi/BM25/FAISS retriever in the evaluation: the lore chunks sharing the most character bigrams with the question."
    modes = ()  # `evaluate_retrieval` then has nothing to score: no recall figures

    def __init__(self, project):
        from dnf_rlhf.lore import load_corpus, chunk_corpus
        from dnf_rlhf.rag import IndexConfig
        cfg = IndexConfig()
        self.chunks = chunk_corpus(load_corpus(project.corpus_path()), cfg.chunk_chars, cfg.chunk_overlap)
        self._grams = [self._bigrams(c.text) for c in self.chunks]

    @staticmethod
    def _bigrams(t:str) -> set:
        t = ''.join(t.split())
        return {t[i:i+2] for i in range(len(t) - 1)}

    def search_batch(self, queries, k=None, **kw):
        from dnf_rlhf.rag import Hit
        out = []
        for q in queries:
            g = self._bigrams(q)
            sc = [len(g & x) for x in self._grams]
            top = sorted(range(len(sc)), key=lambda i: (-sc[i], i))[:k or 2]
            out.append([Hit(self.chunks[i], float(sc[i]), r + 1) for r, i in enumerate(top)])
        return out

def retrieval_free_eval(project):
    "Point the evaluation at `OverlapRetriever` and the passage cut at the token prefix (no Kiwi)."
    import dnf_rlhf.evaluate as ev, dnf_rlhf.rag as rag
    ev.eval_retriever = lambda run: OverlapRetriever(project)
    rag.best_window = lambda text, query, tokenizer, budget, tags=None: rag._prefix(text, tokenizer, budget)

# ---------------------------------------------------------------------------------------------------------------------
class Budget(Exception): pass

def _cuda():
    import torch
    return torch.cuda.is_available()

def mem_reset():
    import torch, gc
    gc.collect()
    if _cuda(): torch.cuda.empty_cache(); torch.cuda.reset_peak_memory_stats()

def mem_peak() -> dict:
    import torch
    if not _cuda(): return {'peak_gb': None}
    return {'peak_gb': round(torch.cuda.max_memory_allocated() / GiB, 3), 'reserved_gb': round(torch.cuda.max_memory_reserved() / GiB, 3)}

def build_standin(folder:Path, size:str, on_gpu:bool) -> str:
    "The stand-in base in `folder`, fp16; initialised on the GPU when asked (falls back to the CPU)."
    import torch
    from dnf_rlhf.models import standin_base
    where = 'cpu'
    if on_gpu:
        try:
            with torch.device('cuda'): standin_base('polyglot-ko', folder, size=size, dtype=torch.float16)
            where = 'cuda'
        except Exception as e:
            print(f"gpu_check: building the stand-in on the GPU failed ({type(e).__name__}: {e}); building on the CPU", file=sys.stderr)
            shutil.rmtree(folder, ignore_errors=True)
    if where == 'cpu': standin_base('polyglot-ko', folder, size=size, dtype=torch.float16)
    return where

def served_answers(run, S:Sizes) -> dict:
    "S.requests chat requests through the real `openai` client to the server on 127.0.0.1 serving the run's PPO model."
    import openai
    from dnf_rlhf.ppo import heldout_ppo_records
    from dnf_rlhf.serve import BackgroundServer, Engine, ServeConfig, load_chat_model, make_app
    project, run_dir = run.project, run.dir
    model, tok, what = load_chat_model(run)
    engine = Engine(model, tok, None, ServeConfig(fit_tokens=run.preset.sft.max_len, retrieval=False, persona=project.persona))
    done = []
    with BackgroundServer(make_app(engine, api_key='')) as srv:
        c = openai.OpenAI(base_url=srv.base_url, api_key='unused', max_retries=0, timeout=300)
        for r in heldout_ppo_records(project, S.requests):
            t0 = time.perf_counter()
            resp = c.chat.completions.create(model='dnf-rlhf', messages=[{'role': 'user', 'content': r.prompt}], max_tokens=S.max_tokens)
            ch = resp.choices[0]
            if not isinstance(ch.message.content, str) or ch.finish_reason not in ('stop', 'length'):
                raise RuntimeError(f"served answer malformed: {ch}")
            done.append(dict(seconds=round(time.perf_counter() - t0, 3), finish=ch.finish_reason,
                             tokens=resp.usage.completion_tokens if resp.usage else None))
    if len(done) != S.requests: raise RuntimeError(f"{len(done)} of {S.requests} requests answered")
    return {'model': str(Path(what).relative_to(run_dir)) if Path(what).is_relative_to(run_dir) else what, 'requests': len(done),
            'request_seconds': [d['seconds'] for d in done], 'completion_tokens': [d['tokens'] for d in done],
            'finish': [d['finish'] for d in done]}

def run_check(a, rep:dict, work:Path):
    import torch
    from dnf_rlhf.core import Run, get_preset, device_policy, probe_hardware, run_stage, package_versions, load_json, CPU_SUBSTITUTES
    S = SMOKE if a.smoke else GPU
    cuda = torch.cuda.is_available()
    rep.update(device='cuda' if cuda and not a.smoke else 'cpu', torch=torch.__version__, cuda=torch.version.cuda,
               versions={k: v for k, v in package_versions().items() if k != 'torch'})
    if not a.smoke and not cuda: raise RuntimeError('no CUDA GPU: run with --smoke for the CPU version of this check')
    if cuda:
        props = torch.cuda.get_device_properties(0)
        rep.update(gpu=props.name, capability=list(torch.cuda.get_device_capability(0)), vram_gb=round(props.total_memory / GiB, 1))
        cap = CAPS_GB[a.preset] if a.cap_gb is None else a.cap_gb
        if not a.smoke and cap:
            frac = min(1.0, cap * GiB / props.total_memory)
            torch.cuda.set_per_process_memory_fraction(frac, 0)
            rep.update(cap_gb=cap, cap_fraction=round(frac, 4))
    # 1. the stand-in base
    t0 = time.time(); mem_reset(); rep['failed_stage'] = 'build'
    base = work/'base'
    where = build_standin(base, S.standin, on_gpu=cuda and not a.smoke)
    rep['build'] = {'seconds': round(time.time() - t0, 2), **mem_peak(), 'size': S.standin, 'on': where,
                    'gb_on_disk': round(sum(f.stat().st_size for f in base.rglob('*') if f.is_file()) / GiB, 3)}
    # 2. the preset on the stand-in (rehearsed shapes only for the smoke run)
    preset = get_preset(a.preset).with_base(str(base))
    if a.smoke: preset = preset.rehearsed()
    policy = device_policy(probe_hardware(), preset)
    want = preset.dtype if policy.device == 'cuda' else CPU_SUBSTITUTES.get(preset.dtype, preset.dtype)  # smoke: the CPU substitute
    if (policy.dtype, policy.quantization) != (want, 'nf4') or (not a.smoke and policy.device != 'cuda'):
        raise RuntimeError(f"policy is not {a.preset}'s (cuda, {preset.dtype}, nf4) or its CPU rehearsal: {policy}")
    rep.update(preset=preset.name, rehearsal=preset.rehearsal, policy=dataclasses.asdict(policy),
               shapes={k: dataclasses.asdict(getattr(preset, k)) for k in ('sft', 'rm', 'ppo')})
    project = trimmed_project(work/'datasets', S.keep)
    run_dir = work/'run'
    # 3. the stage settings, overridden as `--set` does
    from dnf_rlhf import cli  # registers every stage
    retrieval_free_eval(project)
    n = S.prompts
    ev = dict(fact_prompts=n // 2, persona_prompts=n // 4, hostile_prompts=n - n // 2 - n // 4, judge='off', table_rows=2)
    if S.eval_tokens: ev['max_new_tokens'] = S.eval_tokens
    run = Run(preset, project, run_dir, policy=policy, overrides={
        'sft': dict(max_steps=S.sft_steps, eval_steps=S.sft_eval_steps, heldout_prompts=n),
        'rm': dict(max_steps=S.rm_steps, norm_samples=n),
        'ppo': dict(steps=S.ppo_steps, eval_prompts=S.ppo_eval_prompts, checkpoint_every=S.ppo_steps, sample_every=1),
        'dpo': dict(max_steps=S.dpo_steps, heldout_pairs=4 * n),
        **{g: dict(max_steps=S.group_steps, prompts_per_step=2, num_generations=4, eval_prompts=n // 2)
           for g in ('grpo', 'rloo')},
        'eval': ev})
    stages = {k: (lambda k=k: run_stage(run, k)) for k in STAGES if k != 'serve'}
    stages['serve'] = lambda: served_answers(run, S)
    picked = {'sft': lambda m: {'steps': m.get('sft/steps'), 'eval_loss_start': m.get('sft/eval_loss_start')},
              'rm': lambda m: {'accuracy': m.get('rm/accuracy')},
              'ppo': lambda m: {'steps': m.get('ppo/steps'), 'nf4_layers': m.get('ppo/nf4_layers'), 'kl_final': m.get('ppo/kl_final')},
              'ppo_fact': lambda m: {'steps': m.get('ppo_fact/steps'), 'kl_final': m.get('ppo_fact/kl_final')},
              'dpo': lambda m: {'step0_loss': m.get('dpo/step0_loss'), 'heldout_loss': m.get('dpo/heldout_loss')},
              **{g: (lambda m, g=g: {'steps': m.get(f'{g}/steps'), 'reward_final': m.get(f'{g}/reward_final')})
                 for g in ('grpo', 'rloo')},
              'eval': lambda m: {'reward_ppo': m.get('eval/ppo/reward'), 'kl_grpo': m.get('eval/grpo/kl_sft')},
              'serve': lambda m: m}
    rep['stages'] = {}
    for name in STAGES:
        rep['failed_stage'] = name
        mem_reset(); t0 = time.time()
        metrics = stages[name]()
        rep['stages'][name] = {'seconds': round(time.time() - t0, 2), **mem_peak(), **picked[name](metrics or {})}
        print(f"gpu_check: {name} done in {rep['stages'][name]['seconds']} s", file=sys.stderr, flush=True)
    rep['stages']['eval']['prompts'] = sum(1 for _ in (run_dir/'eval'/'answers.jsonl').open(encoding='utf-8'))
    rep['stages']['sft']['nf4_layers'] = load_json(run_dir/'sft'/'manifest.json')['base']['nf4_layers']
    hist = load_json(run_dir/'ppo'/'history.json')  # fp16: the loss scale and the share of updates it skipped, per step
    rep['stages']['ppo'].update({k: [h.get(f'ppo/{k}') for h in hist] for k in ('loss_scale', 'skipped_updates', 'grad_norm')})
    rep['failed_stage'] = None

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--smoke', action='store_true', help="the same code on CPU at toy size (the 'tiny' stand-in, rehearsal shapes)")
    ap.add_argument('--preset', default='colab-t4', choices=sorted(CAPS_GB), help='the Colab GPU preset to run')
    ap.add_argument('--cap-gb', type=float, default=None, help="GPU memory cap in GiB (default: the preset's GPU, a T4: 15); 0: no cap")
    ap.add_argument('--budget-s', type=int, default=None, help='stop with ok=false past this many seconds (default 360 on GPU, 300 smoke)')
    ap.add_argument('--stub-matplotlib', action='store_true', help='use the no-op matplotlib even when it is installed')
    ap.add_argument('--keep', default=None, help='work folder to keep (stand-in, datasets, run); default: a temp folder, removed')
    a = ap.parse_args(argv)
    t_start = time.time()
    rep = dict(check='smoke' if a.smoke else 'gpu', device=None, gpu=None, capability=None, torch=None, stages={}, ok=False, error=None,
               failed_stage='setup')
    rep['blocked'] = block_retrieval()
    rep['stubbed'] = ['matplotlib'] if stub_matplotlib(a.stub_matplotlib) else []
    budget = a.budget_s if a.budget_s is not None else 300 if a.smoke else 360
    def on_alarm(*_): raise Budget(f"past the time budget of {budget} s")
    if budget and hasattr(signal, 'SIGALRM'): signal.signal(signal.SIGALRM, on_alarm); signal.alarm(budget)
    work = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix='gpu_check_'))
    work.mkdir(parents=True, exist_ok=True)
    try:
        run_check(a, rep, work)
        rep['ok'] = True
    except BaseException as e:  # KeyboardInterrupt and the budget alarm too: the JSON line always comes
        traceback.print_exc(file=sys.stderr)
        msg = str(e).strip().splitlines()
        rep['error'] = f"{type(e).__name__}: {msg[0] if msg else ''}"[:500]
        if rep['failed_stage'] in STAGES: rep['stages'].setdefault(rep['failed_stage'], {})['error'] = rep['error']
    finally:
        if hasattr(signal, 'SIGALRM'): signal.alarm(0)
        rep['total_seconds'] = round(time.time() - t_start, 2)
        rep['dnf_rlhf_modules'] = sorted(m for m in sys.modules if m.startswith('dnf_rlhf.'))
        if not a.keep: shutil.rmtree(work, ignore_errors=True)
    sys.stderr.flush()
    print(json.dumps(rep, ensure_ascii=False, default=str), flush=True)
    return 0 if rep['ok'] else 1

if __name__ == '__main__':
    sys.exit(main())
