"""Execute course notebooks at the `tiny` preset on this machine and save their outputs: what a reader sees on GitHub.

    python tools/execute_notebooks.py                       # 01a, 03, 04, 05, 06 and 08
    python tools/execute_notebooks.py 05_ppo 08_evaluation  # some of them

Each notebook runs top to bottom as a learner's CPU runtime runs it (the setup cell picks the preset from the hardware;
`IN_TEST` is not set, so `tiny` stays `tiny`). Outputs are kept except the stderr streams (progress bars and warnings,
which carry this machine's paths); the script fails when an output still names an absolute path. Then `nbdev-clean`
(the CI check) normalises the files. Executed at the commit the setup cell's first output stamps.
"""
import json, os, re, subprocess, sys, time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT = ('01a_tiny_base', '03_sft', '04_reward_model', '05_ppo', '06_rag', '08_evaluation')
ABSOLUTE = re.compile(r'(?<![\w.])/(?:work|root|home|tmp|content|usr|opt|var)/')

def text_of(o:dict) -> str:
    "The text of one output: a stream's, or a result's text/* data."
    parts = o.get('text', '') if o.get('output_type') == 'stream' else \
        [''.join(v) if isinstance(v, list) else str(v) for k, v in o.get('data', {}).items() if k.startswith('text/')]
    return ''.join(parts) if isinstance(parts, list) else parts

def scrub(path:Path) -> list[str]:
    "Drop stderr streams from `path`'s outputs; return the outputs that still name an absolute path."
    nb = json.loads(path.read_text(encoding='utf-8'))
    bad = []
    for c in nb['cells']:
        if c['cell_type'] != 'code': continue
        c['outputs'] = [o for o in c['outputs'] if not (o.get('output_type') == 'stream' and o.get('name') == 'stderr')]
        bad += [f"{path.name} cell {c['id']}: {m.group(0)}…" for o in c['outputs'] for m in [ABSOLUTE.search(text_of(o))] if m]
    path.write_text(json.dumps(nb, ensure_ascii=False, indent=1) + '\n', encoding='utf-8')
    return bad

def main(names) -> int:
    import nbdev.test
    nbdev.test.in_notebook = lambda: True  # test_nb would set IN_TEST (the `test` size) outside a notebook
    for k in ('IN_TEST', 'DNF_RLHF_TEST'): os.environ.pop(k, None)
    os.environ.setdefault('MPLBACKEND', 'Agg')
    bad = []
    for name in names or DEFAULT:
        p = ROOT/'nbs'/f'{name}.ipynb'
        t0 = time.time()
        ok, _ = nbdev.test.test_nb(p, save=True, profile=False, cell_timeout=3600)
        print(f'{name}: {"ok" if ok else "FAILED"} in {time.time() - t0:.0f} s', flush=True)
        if not ok: return 1
        bad += scrub(p)
    subprocess.run(['nbdev-clean'], cwd=ROOT, check=True)
    for b in bad: print('absolute path in an output:', b)
    return 1 if bad else 0

if __name__ == '__main__': sys.exit(main(sys.argv[1:]))
