"""Two processes on the CPU (gloo, `torchrun --nproc_per_node 2`) at the `test` size: SFT, RM and PPO complete under
DDP; PPO's update on a fixed rollout equals one process's on the same global batch; a killed PPO run resumes alone."""
import signal, subprocess, sys, time
from pathlib import Path
import psutil, pytest, torch
from conftest import ROOT
from dnf_rlhf.core import PRESETS, Run, load_json, stage_done
from dnf_rlhf.ppo import last_ppo_checkpoint, train_ppo

SETS = ['--set', 'sft.max_steps=4', '--set', 'sft.eval_steps=2', '--set', 'sft.heldout_prompts=4',
        '--set', 'rm.max_steps=4', '--set', 'rm.norm_samples=8',
        '--set', 'ppo.steps=4', '--set', 'ppo.checkpoint_every=2', '--set', 'ppo.eval_prompts=4']

def torchrun(*args, nproc=2) -> list[str]:
    "The command line of `torchrun --standalone --nproc_per_node nproc ARGS` (a free port) on this interpreter."
    return [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', str(nproc), *args]

def dnf_rlhf(*args) -> list[str]:
    "`dnf-rlhf ARGS` for torchrun (`--no-python`: the console script itself)."
    return ['--no-python', str(Path(sys.executable).parent/'dnf-rlhf'), *args]

def launch(cmd, env, timeout=600) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r

def test_sft_rm_ppo_train_on_two_processes(tmp_path, test_env):
    for stage in ('sft', 'rm', 'ppo'):  # each stage's needs come from this run folder, built a line above
        launch(torchrun(*dnf_rlhf(stage, '--preset', 'tiny', '--out', str(tmp_path), *SETS)), test_env)
        assert stage_done(tmp_path/stage) and not (tmp_path/f'{stage}.partial').exists()
    sft, rm, ppo = (load_json(tmp_path/s/'metrics.json') for s in ('sft', 'rm', 'ppo'))
    assert (sft['sft/processes'], rm['rm/processes'], ppo['ppo/processes']) == (2, 2, 2)
    assert sft['sft/steps'] == 4 and ppo['ppo/steps'] == 4 and ppo['ppo/resumed_at'] == 0
    assert (tmp_path/'ppo'/'adapter'/'adapter_model.safetensors').exists() and (tmp_path/'ppo'/'report.md').exists()
    assert all(torch.isfinite(torch.tensor(v)) for v in load_json(tmp_path/'ppo'/'history.json')[-1].values())

def test_ppo_needs_built_first_on_two_processes(tmp_path, test_env):
    r = subprocess.run(torchrun(*dnf_rlhf('ppo', '--preset', 'tiny', '--out', str(tmp_path), '--set', 'sft.lr=0.5')),
                       capture_output=True, text=True, env=test_env, timeout=300)
    assert r.returncode != 0 and 'built first' in r.stderr and 'dnf-rlhf sft' in r.stderr

def test_two_process_update_equals_one_process(tmp_path, test_env):
    script, ro = ROOT/'tests'/'ddp_update.py', tmp_path/'rollout.pt'
    launch([sys.executable, str(script), str(ro), str(tmp_path/'one.pt')], test_env)  # alone: samples the rollout too
    launch(torchrun(str(script), str(ro), str(tmp_path/'two.pt')), test_env)
    one, two = torch.load(tmp_path/'one.pt'), torch.load(tmp_path/'two.pt')
    assert (one['world'], two['world']) == (1, 2)
    assert one['grads'].keys() == two['grads'].keys() and len(one['grads']) > 2
    assert max(g.abs().max().item() for g in one['grads'].values()) > 1e-4  # the gradients are not all zero
    for k, g in one['grads'].items(): torch.testing.assert_close(two['grads'][k], g, atol=1e-5, rtol=1e-4, msg=k)
    for k in ('ppo/pg_loss', 'ppo/vf_loss', 'ppo/clipfrac', 'ppo/approxkl', 'ppo/kl', 'ppo/reward', 'ppo/grad_norm'):
        assert abs(one['metrics'][k] - two['metrics'][k]) < 1e-5, (k, one['metrics'][k], two['metrics'][k])

def test_killed_process_leaves_a_checkpoint_that_resumes_alone(tmp_path, test_env):
    Run(PRESETS['test']).artifact('rm')  # the cached SFT and RM (built here, alone, if this is the first test to ask)
    sets = ['--set', 'ppo.steps=400', '--set', 'ppo.checkpoint_every=2', '--set', 'ppo.eval_prompts=4']
    p = subprocess.Popen(torchrun(*dnf_rlhf('ppo', '--preset', 'tiny', '--out', str(tmp_path), *sets)), env=test_env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    partial, deadline = tmp_path/'ppo.partial', time.time() + 600
    try:
        while last_ppo_checkpoint(partial) is None:  # the first checkpoint (after step 2), then one process dies
            assert p.poll() is None, 'no checkpoint: ' + p.stderr.read()[-3000:]
            assert time.time() < deadline
            time.sleep(0.2)
        rank1, = [c for c in psutil.Process(p.pid).children(recursive=True) if c.environ().get('RANK') == '1']
        rank1.send_signal(signal.SIGKILL)
        assert p.wait(timeout=120) != 0  # torchrun stops the other process too
    finally:
        if p.poll() is None: p.kill()
    done = int(last_ppo_checkpoint(partial).name.split('-')[1])
    assert 2 <= done < 400
    run = Run(PRESETS['test'], overrides={'ppo': dict(steps=done + 2, checkpoint_every=2, eval_prompts=4)})
    m = train_ppo(partial, run)  # one process resumes what two left
    assert (m['ppo/resumed_at'], m['ppo/steps'], m['ppo/processes']) == (done, done + 2, 1)
