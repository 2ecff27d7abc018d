#!/usr/bin/env bash
# Gather the wheels bench/gpu_check.py needs on the GPU machine into .gpu_wheels/ (git-ignored), small enough to travel
# with the working tree (64 MiB in all, repository included).
#
# The GPU machine has no network and no package index; its image (Python 3.12, x86_64 Linux) has torch, transformers,
# peft, accelerate, tokenizers and sentence-transformers (and so their dependencies: numpy, huggingface-hub, safetensors,
# pyyaml, tqdm, filelock, fsspec, psutil, jinja2, packaging, regex, ...) and pandas, pyarrow, matplotlib (KINDS.md's
# package list), but not trl, bitsandbytes, datasets, fastapi, uvicorn, openai, nor the retrieval packages (kiwipiepy,
# bm25s, faiss: the check does not import them).
#
# What is gathered: REQUIRED (the check cannot run without them) and, while the budget allows, OPTIONAL (dependencies
# the image most likely has already: transformers 5 needs typer -> pydantic; huggingface-hub 2 needs httpx2 -> anyio;
# pandas and pyarrow for datasets, left out first: with the packaged tiny base the repository is ~20 MiB).
# Versions are pinned to the ones installed in the Python running this script (the project's venv: the versions its
# tests pass with). matplotlib (+ fonttools, kiwisolver, contourpy: ~15 MiB) does not fit: the check uses a no-op
# stand-in when the image lacks it.
#
# Wheels are slimmed (repacked with a fresh RECORD, same names and versions): bitsandbytes keeps only the CUDA builds in
# BNB_KEEP (default "128 130": CUDA 12.x runtimes load the 12.8 build, 13.x the 13.0 one; bitsandbytes picks the
# nearest same-major build) and its CPU library; pyarrow loses Flight, S3, headers and tests, and its shared libraries
# are stripped of debug symbols; every wheel loses tests/ and Cython sources.
#
#   bash tools/gpu_wheels.sh          # -> .gpu_wheels/*.whl, .gpu_wheels/names.txt; prints name + MiB and the total
#   BNB_KEEP="126 128 130" bash tools/gpu_wheels.sh   # another choice of CUDA builds (each 12.x build ~5-6 MiB)
#
# On the device (one command; see tools/gpu_check_run.sh):
#   pip install --no-index --find-links .gpu_wheels $(cat .gpu_wheels/names.txt)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${GPU_WHEELS_DIR:-.gpu_wheels}
PY=${PYTHON:-python}
PYV=${GPU_WHEELS_PYTHON:-3.12}  # the GPU machine's Python
RAW=${GPU_WHEELS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/dnf_rlhf/gpu_wheels_raw}/py$PYV  # downloads, kept between runs
export BNB_KEEP=${BNB_KEEP:-"128 130"}
LIMIT_MIB=${GPU_WHEELS_LIMIT_MIB:-64}  # everything that travels: wheels + repository
MARGIN_MIB=${GPU_WHEELS_MARGIN_MIB:-1.5}  # left free for the repository to grow

REQUIRED=(trl bitsandbytes datasets tzdata dill multiprocess xxhash
          fastapi starlette opentelemetry-api uvicorn h11 openai jiter sniffio fastcore)
OPTIONAL=(pydantic pydantic-core annotated-types typing-inspection annotated-doc anyio idna click httpx2 httpcore2 truststore
          python-dateutil pandas pyarrow)

pins() {  # name==version as installed here (bare name when not installed)
  "$PY" - "$@" <<'EOF'
import sys
from importlib.metadata import version, PackageNotFoundError
for n in sys.argv[1:]:
    try: print(f"{n}=={version(n)}")
    except PackageNotFoundError: print(n); print(f"gpu_wheels: {n} is not installed here: not pinned", file=sys.stderr)
EOF
}

mkdir -p "$RAW"
mapfile -t SPECS < <(pins "${REQUIRED[@]}" "${OPTIONAL[@]}")
echo "gpu_wheels: downloading ${#SPECS[@]} wheels for CPython $PYV manylinux x86_64 into $RAW" >&2
"$PY" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
  --python-version "$PYV" --implementation cp --abi "cp${PYV/./}" --abi abi3 --abi none \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_24_x86_64 \
  --platform manylinux_2_27_x86_64 --platform manylinux_2_28_x86_64 \
  -d "$RAW" "${SPECS[@]}"

REPO_BYTES=$( (git ls-files -z; git ls-files -z -o --exclude-standard) | xargs -0 -r stat -c %s 2>/dev/null | awk '{s+=$1} END {print s+0}')
rm -rf "$OUT"; mkdir -p "$OUT"
"$PY" - "$RAW" "$OUT" "$REPO_BYTES" "$LIMIT_MIB" "$MARGIN_MIB" "${#REQUIRED[@]}" "${SPECS[@]}" <<'EOF'
import base64, hashlib, os, re, shutil, subprocess, sys, tempfile, zipfile
from pathlib import Path
raw, out, repo, limit, margin, n_req, specs = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5]), int(sys.argv[6]), sys.argv[7:]
MiB = 2**20
keep_bnb = os.environ['BNB_KEEP'].split()
strip = shutil.which('strip')
norm = lambda s: re.sub(r'[-_.]+', '_', s).lower()

def wheel_for(spec):
    name, _, ver = spec.partition('==')
    hits = sorted(w for w in raw.glob('*.whl') if norm(w.name.split('-')[0]) == norm(name) and (not ver or w.name.split('-')[1] == ver))
    if not hits: sys.exit(f"gpu_wheels: no wheel for {spec} in {raw}")
    return name, hits[-1]

def dropped(pkg, n):
    if re.search(r'(^|/)(tests?|testing)/', n) or n.endswith(('.pyx', '.pxd', '.pxi.in')) or '__pycache__' in n: return True
    if pkg == 'bitsandbytes':
        m = re.match(r'bitsandbytes/libbitsandbytes_([a-z]+)(\d*)\.so$', n)
        if m: return not (m[1] == 'cpu' or (m[1] == 'cuda' and m[2] in keep_bnb))
    if pkg == 'pyarrow':
        if n.startswith(('pyarrow/include/', 'pyarrow/src/')) or re.search(r'flight|_s3fs|libarrow_s3', n): return True
        if re.match(r'pyarrow/lib[a-z_]+\.so(\.\d+\.\d+\.\d+)?$', n): return True  # unversioned and full-version copies; the SONAME (.so.NNNN) stays
    return False

def stripped(pkg, n, data):
    "pyarrow's shared libraries without debug symbols (the dynamic symbol table stays)."
    if not (strip and pkg == 'pyarrow' and re.match(r'pyarrow/lib\w+\.so\.\d+$', n)): return data
    with tempfile.TemporaryDirectory() as d:
        f = Path(d)/'lib.so'; f.write_bytes(data)
        subprocess.run([strip, '--strip-unneeded', str(f)], check=True)
        return f.read_bytes()

def record_hash(data): return 'sha256=' + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()

def slim(src, dst):
    pkg = norm(src.name.split('-')[0])
    with zipfile.ZipFile(src) as zi, zipfile.ZipFile(dst, 'w', zipfile.ZIP_DEFLATED, compresslevel=9) as zo:
        rec = next(n for n in zi.namelist() if n.endswith('.dist-info/RECORD'))
        rows = []
        for info in zi.infolist():
            n = info.filename
            if n == rec or dropped(pkg, n): continue
            data = stripped(pkg, n, zi.read(n))
            zo.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED, compresslevel=9)
            rows.append(f'{n},{record_hash(data)},{len(data)}')
        zo.writestr(rec, '\n'.join(rows + [f'{rec},,']) + '\n')

budget = (limit - margin) * MiB - repo
used, names, left_out, table = 0, [], [], []
for i, spec in enumerate(specs):
    name, src = wheel_for(spec)
    dst = out/src.name
    slim(src, dst)
    size = dst.stat().st_size
    if i >= n_req and used + size > budget:  # optional and over budget: leave it out
        dst.unlink(); left_out.append(f'{name} ({size/MiB:.2f} MiB)'); continue
    used += size; names.append(name); table.append((size, name, src.stat().st_size))
(out/'names.txt').write_text('\n'.join(names) + '\n')
for size, name, orig in sorted(table, reverse=True): print(f'{size/MiB:7.2f} MiB  {name}' + (f'  (slimmed from {orig/MiB:.2f})' if orig - size > 0.05*MiB else ''))
print(f'{used/MiB:7.2f} MiB  total wheels ({len(names)}); repository {repo/MiB:.2f} MiB; together {(used+repo)/MiB:.2f} of {limit:g} MiB')
if left_out: print('left out (optional, over budget): ' + ', '.join(left_out))
if used + repo > limit * MiB:
    sys.exit(f'gpu_wheels: {((used+repo)/MiB):.2f} MiB does not fit in {limit:g} MiB')
EOF
