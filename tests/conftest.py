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
    "Run the installed `dnf-rlhf` console script; return the completed process."
    exe = Path(sys.executable).parent/'dnf-rlhf'
    return subprocess.run([str(exe), *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout)

def shared_data(*parts):
    "A path under ../shared/data, or skip the test when it is absent."
    p = SHARED.joinpath(*parts)
    if not p.exists(): pytest.skip(f"../shared/data not present ({p}); this test reads the external data")
    return p
