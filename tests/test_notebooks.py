"The notebooks as a learner meets them: one setup cell first, the preset from the hardware, never a hard-coded tiny preset."
import json, re
from conftest import ROOT

NBS = sorted((ROOT/'nbs').glob('[0-9]*.ipynb'))
TINY = re.compile(r"""get_preset\(\s*['"](tiny|test)['"]|PRESETS\[\s*['"](tiny|test)['"]\s*\]""")

def code_cells(p):
    return [''.join(c['source']) for c in json.loads(p.read_text(encoding='utf-8'))['cells'] if c['cell_type'] == 'code']

def setup_cell(p) -> str:
    "The first code cell that is not only `#|` directives."
    return next(s for s in code_cells(p) if any(l.strip() and not l.startswith('#|') for l in s.splitlines()))

def test_every_notebook_opens_with_the_same_setup_cell():
    first = {p.name: setup_cell(p) for p in NBS}
    want = first['03_sft.ipynb']
    assert 'notebook_run(PRESET)' in want and 'SOURCE' in want and 'google.colab' in want
    assert {n for n, s in first.items() if s != want} == set()

def test_no_notebook_names_the_tiny_preset_outside_the_setup_cell():
    "Only 91_core, which defines the presets, names them; every other notebook runs on the preset it was given."
    found = {p.name: TINY.findall('\n'.join(code_cells(p))) for p in NBS if p.name != '91_core.ipynb'}
    assert {n: f for n, f in found.items() if f} == {}
