#!/usr/bin/env bash
# Install dnf_rlhf with its dependency floors pinned exactly and run the test-size pipeline on them.
#
#   tools/check_floors.sh [VENV_DIR]     (default: a new folder under ${TMPDIR:-/tmp})
#
# The floors are the `>=X` of transformers, trl, peft, accelerate, bitsandbytes, datasets and tokenizers in
# pyproject.toml's dependencies (read from there: this script holds no second copy of the numbers); they are
# installed as `==X` through a constraints file, with torch==2.13.0 (the CPU build) first. Then `dnf-rlhf doctor`
# and `DNF_RLHF_TEST=1 dnf-rlhf run --preset tiny` run with a fresh artifact cache in a temp dir (the default
# cache holds artifacts built with other versions). Prints the installed versions and ends with one JSON line
# {"floors": {...}, "installed": {...}, "pipeline_rc": 0, "seconds": ...}; exits non-zero when anything fails.
# A bench tool (about 15-25 minutes on 2 CPU cores with a cold pip cache), not part of CI. Environment: PYTHON (interpreter
# for the venv, default python3), TORCH_SPEC (default torch==2.13.0), KEEP=1 keeps the temp folder (venv, run, cache).
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
PACKAGES="transformers trl peft accelerate bitsandbytes datasets tokenizers"
T0=$(date +%s)
WORK="$(mktemp -d "${TMPDIR:-/tmp}/check_floors.XXXXXX")"
VENV="${1:-$WORK/venv}"
cleanup() { [ "${KEEP:-0}" = 1 ] || rm -rf "$WORK"; }  # a VENV_DIR given as argument stays
trap cleanup EXIT

fail() {  # fail STEP RC: the JSON line, then exit non-zero
    local secs=$(( $(date +%s) - T0 ))
    echo "check_floors: $1 failed (rc $2)" >&2
    printf '{"floors": %s, "failed": "%s", "pipeline_rc": %s, "seconds": %s}\n' "${FLOORS_JSON:-null}" "$1" "${PIPE_RC:-null}" "$secs"
    exit "${2:-1}"
}

# 1. the floors, from pyproject.toml's [project] dependencies
FLOORS_JSON="$("$PY" - "$ROOT/pyproject.toml" $PACKAGES <<'EOF'
import json, re, sys
text = open(sys.argv[1], encoding='utf-8').read()
deps = re.search(r'^dependencies\s*=\s*\[(.*?)^\]', text, re.S | re.M).group(1)
floors = {m.group(1).lower(): m.group(2) for m in re.finditer(r'"\s*([A-Za-z0-9_.-]+)\s*>=\s*([0-9][^",;\s]*)', deps)}
missing = [p for p in sys.argv[2:] if p not in floors]
if missing: sys.exit(f"pyproject.toml declares no '>=' floor for {missing}")
print(json.dumps({p: floors[p] for p in sys.argv[2:]}))
EOF
)" || fail "reading the floors from pyproject.toml" 2
echo "floors (pyproject.toml): $FLOORS_JSON"
CONSTRAINTS="$WORK/constraints.txt"
"$PY" -c 'import json, sys; print("\n".join(f"{k}=={v}" for k, v in json.loads(sys.argv[1]).items()))' "$FLOORS_JSON" > "$CONSTRAINTS"
echo "$TORCH_SPEC" >> "$CONSTRAINTS"
cat "$CONSTRAINTS"

# 2. a fresh venv: torch first (the CPU build), then the project under the constraints
[ -e "$VENV" ] && { echo "check_floors: $VENV exists; give a new folder" >&2; fail "creating the venv" 2; }
"$PY" -m venv "$VENV" || fail "creating the venv" $?
VPY="$VENV/bin/python"
"$VPY" -m pip install -q --upgrade pip || fail "upgrading pip" $?
"$VPY" -m pip install -q "$TORCH_SPEC" || fail "installing $TORCH_SPEC" $?
# from a copy of the source: a build writes build/ and *.egg-info/ into the folder it builds
"$PY" - "$ROOT" "$WORK/src" <<'EOF' || fail "copying the source" $?
import shutil, sys
shutil.copytree(sys.argv[1], sys.argv[2], ignore=shutil.ignore_patterns(
    '.git', '.venv', 'venv', 'build', 'dist', '*.egg-info', 'runs', '_docs', '_proc', '.cache', '__pycache__', '.pytest_cache'))
EOF
"$VPY" -m pip install -q -c "$CONSTRAINTS" "$WORK/src" || fail "installing dnf_rlhf with the floors" $?
"$VPY" -m pip check || echo "check_floors: pip check reports conflicts (above)" >&2
INSTALLED_JSON="$("$VPY" - $PACKAGES torch sentence-transformers huggingface_hub <<'EOF'
import json, sys
from importlib.metadata import version, PackageNotFoundError
def v(p):
    try: return version(p)
    except PackageNotFoundError: return None
print(json.dumps({p: v(p) for p in sys.argv[1:]}))
EOF
)" || fail "reading the installed versions" $?
echo "installed: $INSTALLED_JSON"
"$VPY" - "$FLOORS_JSON" "$INSTALLED_JSON" <<'EOF' || fail "installing exactly the floors" 3
import json, platform, sys
from packaging.version import Version
floors, got = json.loads(sys.argv[1]), json.loads(sys.argv[2])
if platform.system() == 'Darwin' and got['bitsandbytes'] is None: del floors['bitsandbytes']  # not a dependency there
bad = {p: (v, got[p]) for p, v in floors.items() if got[p] is None or Version(got[p]) != Version(v)}
if bad: sys.exit(f"installed versions differ from the floors: {bad}")
EOF

# 3. doctor and the test-size pipeline, outside the checkout, with a fresh artifact cache
export DNF_RLHF_TEST=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 MPLBACKEND=Agg TOKENIZERS_PARALLELISM=false DNF_RLHF_CACHE="$WORK/cache"
unset OPENAI_BASE_URL OPENAI_API_KEY  # the judge stays off
cd "$WORK" || fail "entering $WORK" 2
"$VENV/bin/dnf-rlhf" doctor || fail "dnf-rlhf doctor" $?
P0=$(date +%s)
"$VENV/bin/dnf-rlhf" run --preset tiny --out "$WORK/run"
PIPE_RC=$?
PIPE_SECS=$(( $(date +%s) - P0 ))
[ "$PIPE_RC" = 0 ] && [ -s "$WORK/run/report.md" ] || fail "dnf-rlhf run (test size)" $(( PIPE_RC ? PIPE_RC : 4 ))
head -n 12 "$WORK/run/report.md"
printf '{"floors": %s, "installed": %s, "pipeline_rc": %s, "pipeline_seconds": %s, "seconds": %s}\n' \
    "$FLOORS_JSON" "$INSTALLED_JSON" "$PIPE_RC" "$PIPE_SECS" "$(( $(date +%s) - T0 ))"
