"""The GPU check's own code path on CPU: `python bench/gpu_check.py --smoke` (tiny stand-in, the rehearsal's shapes) runs
SFT -> RM -> PPO -> DPO -> GRPO -> RLOO -> eval -> 4 served requests without the retrieval packages and with the no-op matplotlib, and
its last line is the JSON report with every stage timed."""
import json, os, subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

def test_gpu_check_smoke(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE='1', MPLBACKEND='Agg', PYTHONPATH=str(ROOT))
    env.pop('DNF_RLHF_TEST', None)  # the check sets its own sizes
    r = subprocess.run([sys.executable, str(ROOT/'bench'/'gpu_check.py'), '--smoke', '--stub-matplotlib', '--keep', str(tmp_path/'work')],
                       capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    lines = r.stdout.strip().splitlines()
    assert lines, r.stderr[-3000:]
    rep = json.loads(lines[-1])
    assert rep['ok'] is True and r.returncode == 0, (rep.get('error'), r.stderr[-3000:])
    assert (rep['check'], rep['device'], rep['error']) == ('smoke', 'cpu', None)
    for stage in ('sft', 'rm', 'ppo', 'dpo', 'grpo', 'rloo', 'eval', 'serve'):
        assert rep['stages'][stage]['seconds'] > 0, stage
    assert rep['stages']['serve']['requests'] == 4 and rep['stages']['eval']['prompts'] == 8
    assert rep['policy']['dtype'] == 'bf16' and rep['policy']['quantization'] == 'nf4'  # fp16's CPU substitute
    assert rep['stubbed'] == ['matplotlib'] and set(rep['blocked']) == {'kiwipiepy', 'bm25s', 'faiss'}
