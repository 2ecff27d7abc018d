#!/usr/bin/env bash
# The XLA check without a TPU: torch_xla on the CPU (PJRT_DEVICE=CPU) runs the `test`-size SFT, RM and PPO steps on the
# xla:0 device and counts XLA compilations per step (bench/xla_check.py). The last line printed is one JSON object.
#
#   bash bench/xla_check.sh                 # builds the venv on first use (~3.4 GB of downloads, ~7 GB installed)
#   XLA_VENV=/path/to/venv bash bench/xla_check.sh --steps 5
#
# torch_xla lives only in its own venv (default ~/.cache/dnf_rlhf-xla/venv, kept between runs): with torch_xla
# importable, accelerate and transformers switch every trainer to XLA by themselves, which the normal CPU/GPU
# environment must never do. The test-size SFT and RM are built first on the plain CPU of that venv (USE_TORCH_XLA=0
# keeps accelerate and transformers off XLA), into the artifact cache ($DNF_RLHF_CACHE, default ~/.cache/dnf_rlhf).
set -euo pipefail
cd "$(dirname "$0")/.."
V=${XLA_VENV:-$HOME/.cache/dnf_rlhf-xla/venv}
export PIP_DISABLE_PIP_VERSION_CHECK=1 DNF_RLHF_TEST=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false MPLBACKEND=Agg
if [ ! -x "$V/bin/python" ] || ! "$V/bin/python" -c 'import torch_xla, dnf_rlhf' 2>/dev/null; then
  echo "xla_check: building $V (torch 2.9.0 + torch_xla 2.9.0 + this checkout)" >&2
  python3 -m venv "$V"
  "$V/bin/pip" install -q torch==2.9.0 torch_xla==2.9.0 >&2
  "$V/bin/pip" install -q -e . >&2
fi
USE_TORCH_XLA=0 "$V/bin/python" bench/xla_check.py --build >&2  # the cached SFT and RM, on the CPU
PJRT_DEVICE=CPU "$V/bin/python" bench/xla_check.py "$@"
