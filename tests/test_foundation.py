"The frame: console script, the main job, and the wheel with its data."
import json, os, subprocess, sys, sysconfig, venv
from pathlib import Path
import pytest
from conftest import clean_env as _clean_env, fresh_venv, ROOT, cli

def test_doctor_prints_report(test_env):
    r = cli('doctor', env=test_env)
    assert r.returncode == 0, r.stderr
    for key in ('torch', 'transformers', 'peft', 'trl', 'bitsandbytes', 'bf16', 'RAM', '4-bit NF4', 'preset'):
        assert key in r.stdout, (key, r.stdout)

def test_run_writes_report(tmp_path, test_env):
    "The whole pipeline at the `test` size, judge included (a loopback OpenAI-compatible server); then `dnf-rlhf eval --check`."
    from dnf_rlhf.loopback import LoopbackServer
    from dnf_rlhf.evaluate import missing_or_nonfinite, SYSTEMS
    out = tmp_path/'run'
    with LoopbackServer() as srv:
        env = dict(test_env, OPENAI_BASE_URL=srv.base_url, DNF_RLHF_MODEL='loopback-judge')
        env.pop('OPENAI_API_KEY', None)
        r = cli('run', '--preset', 'tiny', '--out', str(out), env=env, timeout=1800)  # builds what the cache lacks
        assert r.returncode == 0, r.stderr[-3000:]
        rep = json.loads((out/'report.json').read_text())
        assert rep['preset'] == 'test'  # DNF_RLHF_TEST shrinks tiny
        from dnf_rlhf.cli import PIPELINE
        assert [s['stage'] for s in rep['stages']] == [s.name for s in PIPELINE if not s.optional]  # opt-in ones aside
        metrics = {k: v for s in rep['stages'] for k, v in s['metrics'].items()}
        assert missing_or_nonfinite(metrics) == []  # every model x metric present and finite
        assert all(metrics[f'eval/{s}/judge_n'] > 0 for s in SYSTEMS)  # the judge ran through the real client
        md = (out/'report.md').read_text()
        assert md.startswith('# dnf_rlhf') and '## 평가' in md and '전반적인 품질' in md and '타우킹 샤우타는 누구인가요?' in md
        assert (out/'eval'/'eval_bars.png').stat().st_size > 0 and (out/'eval'/'ppo_curves.png').stat().st_size > 0
        requests = len(srv.log)
        c = cli('eval', '--out', str(out), '--check', env=env, timeout=900)  # every number recomputed from the run's artifacts
        assert c.returncode == 0, c.stdout[-2000:] + c.stderr[-2000:]
        assert json.loads(c.stdout.strip().splitlines()[-1])['differences'] == []
        assert len(srv.log) == requests  # the judge's answers came from the run's cache, not new calls

def test_unknown_preset_is_a_clear_error(tmp_path, test_env):
    r = cli('run', '--preset', 'colab-h100', '--out', str(tmp_path), env=test_env)
    assert r.returncode != 0 and 'unknown preset' in r.stderr


def test_wheel_builds_installs_and_finds_its_data(wheel, tmp_path):
    whl = wheel
    env_dir = tmp_path/'venv'
    py = fresh_venv(env_dir)
    i = subprocess.run([str(py), '-m', 'pip', 'install', '-q', '--no-deps', str(whl)], capture_output=True, text=True,
                       env=_clean_env(), timeout=600)
    assert i.returncode == 0, i.stderr
    code = 'import dnf_rlhf.core as c, sys; d = c.data_dir(); print(d); assert d.is_relative_to(sys.prefix), d; assert any((d/"lore").glob("*.md"))'
    r = subprocess.run([str(py), '-c', code], capture_output=True, text=True, cwd=tmp_path, env=_clean_env(), timeout=120)
    assert r.returncode == 0, r.stderr
    d = subprocess.run([str(env_dir/'bin'/'dnf-rlhf'), 'doctor'], capture_output=True, text=True, cwd=tmp_path,
                       env=_clean_env(), timeout=300)
    assert d.returncode == 0 and 'preset' in d.stdout, d.stderr

# Run by a second interpreter: the installed package, its data found under the other prefix (argv[1]).
_FIND_DATA = """
import sys
from pathlib import Path
other = Path(sys.argv[1]).resolve()
import dnf_rlhf, dnf_rlhf.core as c
from dnf_rlhf.demo_data import DEMO_FILES
assert Path(dnf_rlhf.__file__).resolve().is_relative_to(other), dnf_rlhf.__file__
assert not Path(sys.prefix).resolve().is_relative_to(other), sys.prefix
d = c.data_dir()
print(d)
assert d.resolve().is_relative_to(other), d
assert any((d/'lore').glob('*.md')), d
assert (d/'facts'/'facts.csv').is_file(), d
missing = [f'{k}_{s}.jsonl' for k in DEMO_FILES for s in ('train', 'test') if not (d/'demo'/f'{k}_{s}.jsonl').is_file()]
assert not missing, missing
"""

def test_wheel_data_found_outside_sys_prefix(wheel, tmp_path):
    "Installed under a prefix other than `sys.prefix` (as Colab's Debian-patched Python does), the data is found."
    other = tmp_path/'other'
    # --ignore-installed: pip must not uninstall this venv's own (editable) dnf_rlhf on the way
    i = subprocess.run([sys.executable, '-m', 'pip', 'install', '-q', '--no-deps', '--ignore-installed',
                        '--prefix', str(other), str(wheel)], capture_output=True, text=True, env=_clean_env(), timeout=600)
    assert i.returncode == 0, i.stderr
    site, = {p.parent for p in other.glob('lib*/python*/*-packages/dnf_rlhf')}
    # -S: no site-packages, so no .pth files and no editable checkout; dependencies come from this venv after `site`
    env = _clean_env()
    env['PYTHONPATH'] = os.pathsep.join([str(site), sysconfig.get_paths()['purelib']])
    r = subprocess.run([sys.executable, '-S', '-c', _FIND_DATA, str(other)], capture_output=True, text=True,
                       cwd=tmp_path, env=env, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
