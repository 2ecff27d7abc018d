import os, sys, subprocess
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent/'shared'/'data'

@pytest.fixture
def test_env(tmp_path):
    "Environment for subprocesses: the smaller `test` size of the tiny preset; the artifact cache is shared (content-keyed)."
    env = dict(os.environ, DNF_RLHF_TEST='1', MPLBACKEND='Agg', HF_HUB_OFFLINE='1')
    return env

def cli(*args, env=None, cwd=None, timeout=600):
    "Run the installed `dnf-rlhf` console script; return the completed process, its output as str with '\\r' kept."
    exe = Path(sys.executable).parent/'dnf-rlhf'
    r = subprocess.run([str(exe), *args], capture_output=True, env=env, cwd=cwd, timeout=timeout)  # text=True would turn \r into \n
    r.stdout, r.stderr = r.stdout.decode('utf-8', 'replace'), r.stderr.decode('utf-8', 'replace')
    return r

def shared_data(*parts):
    "A path under ../shared/data, or skip the test when it is absent."
    p = SHARED.joinpath(*parts)
    if not p.exists(): pytest.skip(f"../shared/data not present ({p}); this test reads the external data")
    return p

def clean_env() -> dict:
    "This process's environment without the variables that would point a child at a checkout or its data."
    return {k: v for k, v in os.environ.items() if k not in ('PYTHONPATH', 'DNF_RLHF_DATA', 'PYTHONHOME')}

@pytest.fixture(scope='session')
def wheel(tmp_path_factory):
    "The project's wheel, built once for the tests that install it (~30-60 s)."
    dist = tmp_path_factory.mktemp('dist')
    b = subprocess.run([sys.executable, '-m', 'build', '--wheel', '--outdir', str(dist), str(ROOT)],
                       capture_output=True, text=True, timeout=600)
    assert b.returncode == 0, b.stdout[-2000:] + b.stderr[-2000:]
    whl, = dist.glob('dnf_rlhf-*.whl')
    return whl

def fresh_venv(path) -> Path:
    "A new venv at `path` whose dependencies are this interpreter's (a `.pth`, as Colab's preinstalled packages); its python."
    import sysconfig, venv
    venv.create(path, with_pip=True)
    py = Path(path)/'bin'/'python'
    site = subprocess.run([str(py), '-c', 'import sysconfig; print(sysconfig.get_paths()["purelib"])'],
                          capture_output=True, text=True, env=clean_env()).stdout.strip()
    Path(site, '_deps.pth').write_text(sysconfig.get_paths()['purelib'] + '\n')  # a plain path: its editable dnf_rlhf is not loaded
    return py
