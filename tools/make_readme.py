#!/usr/bin/env python3
"""Write README.md from nbs/index.ipynb (markdown cells as they are, code cells as fenced Python).

A stand-in for `nbdev-readme`, which needs Quarto (not installable on the machines this project is built on).
`python tools/make_readme.py --print-command main|test` prints one of the README's two commands (used by .ci/run).
"""
import json, re, sys
from pathlib import Path

root = Path(__file__).resolve().parent.parent

def render(nb_path=root/'nbs'/'index.ipynb') -> str:
    nb = json.loads(Path(nb_path).read_text(encoding='utf-8'))
    parts = []
    for c in nb['cells']:
        src = ''.join(c['source']).strip()
        if not src: continue
        if c['cell_type'] == 'markdown': parts.append(src)
        elif c['cell_type'] == 'code' and not src.startswith('#|'): parts.append(f'```python\n{src}\n```')
    head = '<!-- generated from nbs/index.ipynb by tools/make_readme.py: edit the notebook, not this file -->\n\n'
    return head + '\n\n'.join(parts) + '\n'

def command(which: str, text: str) -> str:
    m = re.search(rf'<!-- {which}-command -->\s*```bash\n(.+?)\n```', text, re.S)
    if not m: sys.exit(f"README.md has no '<!-- {which}-command -->' block")
    return m.group(1).strip()

if __name__ == '__main__':
    if len(sys.argv) == 3 and sys.argv[1] == '--print-command':
        print(command(sys.argv[2], (root/'README.md').read_text(encoding='utf-8')))
    else:
        (root/'README.md').write_text(render(), encoding='utf-8')
