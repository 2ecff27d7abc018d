"""Acceptance of PPO on the full `tiny` preset (CPU): the tiny base, SFT and reward model stages (cached), then PPO with
the tiny preset's PPO config (`run.cfg('ppo')`), then the before/after numbers on the held-out prompts.

Criteria (issue 8): >= 64 held-out prompts with fixed seeds; mean RM reward after PPO exceeds SFT's by more than two
standard errors (of the paired difference); factual accuracy does not fall by more than its standard error (paired);
final KL below the controller's target (training tail and held-out samples); greedy EOS rate within 5 points of SFT's.

PPO trains into RUN/ppo from RUN's own sft/ and rm/ stages (so later edits of the SFT/RM code do not force a rebuild);
a killed run resumes from RUN/ppo.partial. Usage: python bench/ppo_tiny.py [--run-dir DIR]. Minutes on 2 shared cores.
Last line: one JSON object.
"""
import argparse, json, tempfile, time
from pathlib import Path

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--run-dir', default=None, help='run folder (default: a temporary one); its tinybase/sft/rm stages are reused')
    a = ap.parse_args()
    from dnf_rlhf.core import PRESETS, ProjectConfig, Run, load_json, run_stage, stage_done, stage_output, METRICS
    from dnf_rlhf.ppo import train_ppo  # registers the tinybase, sft, rm and ppo stages
    preset, project = PRESETS['tiny'], ProjectConfig()
    run_dir = Path(a.run_dir or tempfile.mkdtemp(prefix='ppo_tiny_'))
    run = Run(preset, project, run_dir)
    t0, secs = time.time(), {}
    for name in ('tinybase', 'sft', 'rm'):
        s0 = time.time()
        if not stage_done(run_dir/name): run_stage(run, name)
        secs[name] = round(time.time() - s0, 1)
        print(f'{name}: {secs[name]} s', flush=True)
    s0 = time.time()
    if not stage_done(run_dir/'ppo'):
        with stage_output(run_dir, 'ppo') as out: train_ppo(out, run)
    m = load_json(run_dir/'ppo'/METRICS)
    secs['ppo'] = round(time.time() - s0, 1)
    cfg = run.cfg('ppo')
    sft_m, rm_m = load_json(run_dir/'sft'/METRICS), load_json(run_dir/'rm'/METRICS)
    g = lambda k: m[f'ppo_eval/{k}']
    checks = {
        'heldout_prompts_ge_64': g('prompts') >= 64,
        'rm_reward_up_by_2se': g('reward_gain') > 2 * g('reward_gain_se'),
        'fact_acc_not_down_beyond_se': g('fact_acc_change') >= -g('fact_acc_change_se') - 1e-12,  # a drop of exactly one SE is not beyond it
        'final_kl_below_target': m['ppo/kl_final'] < cfg.kl_target and g('kl') < cfg.kl_target,
        'greedy_eos_within_5_points': abs(g('greedy_eos_rate_ppo') - g('greedy_eos_rate_sft')) <= 0.05,
    }
    out = dict(bench='ppo_tiny', preset=preset.name, run_dir=str(run_dir), ppo_steps=m['ppo/steps'], kl_target=cfg.kl_target,
               heldout_prompts=g('prompts'), fact_prompts=g('fact_prompts'),
               reward_sft=g('reward_sft'), reward_sft_se=g('reward_sft_se'), reward_ppo=g('reward_ppo'), reward_ppo_se=g('reward_ppo_se'),
               reward_gain=g('reward_gain'), reward_gain_se=g('reward_gain_se'), win_rate=g('win_rate'),
               fact_acc_sft=g('fact_acc_sft'), fact_acc_ppo=g('fact_acc_ppo'), fact_acc_change=g('fact_acc_change'),
               fact_acc_change_se=g('fact_acc_change_se'), kl_train_final=m['ppo/kl_final'], kl_heldout=g('kl'), kl_heldout_se=g('kl_se'),
               greedy_eos_sft=g('greedy_eos_rate_sft'), greedy_eos_ppo=g('greedy_eos_rate_ppo'),
               greedy_reward_sft=g('greedy_reward_sft'), greedy_reward_ppo=g('greedy_reward_ppo'),
               rm_accuracy=rm_m.get('rm/accuracy'), sft_nonempty_eos_rate=sft_m.get('sft/nonempty_eos_rate'),
               checks=checks, accepted=all(checks.values()), stage_seconds=secs, ppo_train_seconds=round(m['ppo/seconds'], 1),
               seconds=round(time.time() - t0, 1))
    print(json.dumps(out, ensure_ascii=False))

if __name__ == '__main__': main()
