#!/usr/bin/env bash
# The whole device session in one command: install the wheels carried in .gpu_wheels/ (see tools/gpu_wheels.sh) without
# network or index, then run bench/gpu_check.py under a timeout. The last line printed is the check's JSON object (or,
# when the install fails or the timeout strikes first, a JSON object saying so); the exit status is the check's.
#
#   bash tools/gpu_check_run.sh              # the GPU check
#   bash tools/gpu_check_run.sh --smoke      # any arguments go to bench/gpu_check.py
#
# From the session (the wheels travel as an ignored path): run(command="bash tools/gpu_check_run.sh",
# carry=[".gpu_wheels"], timeout_s=480). GPU_CHECK_TIMEOUT (default 420 s) bounds the check; its own budget is 360 s
# (colab-t4 took 277 s on an H100, 2026-12-05).
set -uo pipefail
cd "$(dirname "$0")/.."
W=${GPU_WHEELS_DIR:-.gpu_wheels}
T=${GPU_CHECK_TIMEOUT:-420}
PY=${PYTHON:-python}
fail() { printf '{"check": "gpu", "ok": false, "error": "%s"}\n' "$1"; exit 1; }
[ -s "$W/names.txt" ] || fail "no $W/names.txt: run tools/gpu_wheels.sh and carry $W"
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 PIP_BREAK_SYSTEM_PACKAGES=1 PIP_ROOT_USER_ACTION=ignore
"$PY" -c 'import sys, torch; print("gpu_check_run: python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda, "gpu", torch.cuda.is_available())' >&2
t0=$(date +%s)
mapfile -t NAMES < "$W/names.txt"
if ! "$PY" -m pip install -q --no-index --find-links "$W" "${NAMES[@]}" >&2; then
  echo "gpu_check_run: install with dependencies failed; installing the carried wheels alone (--no-deps)" >&2
  "$PY" -m pip install -q --no-index --find-links "$W" --no-deps "${NAMES[@]}" >&2 || fail "pip install from $W failed"
fi
echo "gpu_check_run: installed ${#NAMES[@]} packages in $(( $(date +%s) - t0 )) s" >&2
timeout -k 10 "$T" "$PY" bench/gpu_check.py "$@"
rc=$?
if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then fail "bench/gpu_check.py killed after the ${T} s timeout"; fi
exit "$rc"
