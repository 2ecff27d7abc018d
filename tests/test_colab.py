"""A learner's Colab runtime, rehearsed on this machine: the built wheel installed by the notebooks' own setup cell into a
fresh venv, the notebooks copied outside the clone, an empty HOME (an empty cache), no ../shared, the preset chosen from
the hardware. Notebooks 03 (SFT) and 05 (PPO) must run top to bottom at the `test` size."""
import json, shutil, subprocess
from conftest import ROOT, clean_env, fresh_venv
from dnf_rlhf import __version__

RUN = """
import sys
from nbdev.test import test_nb
ok, secs = test_nb(sys.argv[1], profile=False, save=True)  # save: the outputs are read back below
print('notebook', sys.argv[1], 'ok' if ok else 'FAILED', round(secs), 's')
sys.exit(0 if ok else 1)
"""

def test_notebooks_run_like_on_colab(wheel, tmp_path):
    py = fresh_venv(tmp_path/'venv')
    work, home = tmp_path/'content', tmp_path/'home'
    work.mkdir(); home.mkdir()
    drop = ('DNF_RLHF_CACHE', 'DNF_RLHF_RUNS', 'DNF_RLHF_TEST', 'IN_TEST', 'VIRTUAL_ENV')
    env = {k: v for k, v in clean_env().items() if k not in drop}
    env.update(HOME=str(home), DNF_RLHF_SOURCE=str(wheel), MPLBACKEND='Agg', HF_HUB_OFFLINE='1', TOKENIZERS_PARALLELISM='false')
    for name in ('03_sft.ipynb', '05_ppo.ipynb'):
        nb = shutil.copy(ROOT/'nbs'/name, work/name)
        r = subprocess.run([str(py), '-c', RUN, str(nb)], capture_output=True, text=True, cwd=work, env=env, timeout=1800)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
        cells = [c for c in json.loads((work/name).read_text(encoding='utf-8'))['cells'] if c['cell_type'] == 'code']
        stamp = ''.join(o.get('text', '') if isinstance(o.get('text'), str) else ''.join(o.get('text', []))
                        for o in cells[1]['outputs'])
        assert f'dnf_rlhf {__version__} (installed)' in stamp and 'preset test' in stamp, stamp  # the wheel, not this checkout
    assert not (ROOT.parent/'content').exists() and any((home/'.cache'/'dnf_rlhf').iterdir())  # built under the empty HOME
