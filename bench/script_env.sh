#!/usr/bin/env bash
# The baseline of `bench/overhead.py`: diffusers' own example script
# `examples/text_to_image/train_text_to_image_lora_sdxl.py`, run as it is, in a venv of its
# own. It imports torchvision, and PyPI's torchvision cannot be imported beside bluepri's
# torch 2.13.0 ("operator torchvision::nms does not exist"), so the script gets torch 2.14.1 +
# torchvision 0.29.1 (a CUDA build that runs on the CPU; ~5.5 GB) and the same diffusers,
# transformers, peft, accelerate and datasets versions as bluepri's venv.
#
#     bench/script_env.sh [VENV] [SCRIPT]    # defaults: /work/script-venv, <VENV>/train_text_to_image_lora_sdxl.py
#     .venv/bin/python bench/overhead.py --script-python VENV/bin/python --diffusers-script SCRIPT
#
# The script comes from a diffusers checkout: DIFFUSERS_GIT (a git dir, default the local
# mirror) at DIFFUSERS_REV (default HEAD), or DIFFUSERS_SCRIPT_URL when set (e.g.
# https://raw.githubusercontent.com/huggingface/diffusers/<rev>/examples/text_to_image/train_text_to_image_lora_sdxl.py).
# Idempotent: an existing venv is reused, pip only adds what is missing.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
venv=${1:-/work/script-venv}
script=${2:-$venv/train_text_to_image_lora_sdxl.py}
python=${PYTHON:-python3}
bluepri_pip="$here/.venv/bin/pip"
diffusers_git=${DIFFUSERS_GIT:-/work/.mirror/huggingface+diffusers/repo}
diffusers_rev=${DIFFUSERS_REV:-HEAD}
script_path=examples/text_to_image/train_text_to_image_lora_sdxl.py

# The versions bluepri's venv has, so only torch/torchvision differ between the two.
pinned() { "$bluepri_pip" freeze 2>/dev/null | grep -iE "^$1==" || echo "$1"; }

test -x "$venv/bin/python" || "$python" -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip
"$venv/bin/python" -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
# requirements_sdxl.txt of the example, pinned to bluepri's versions where bluepri has them.
"$venv/bin/python" -m pip install -q \
  "$(pinned diffusers)" "$(pinned transformers)" "$(pinned peft)" "$(pinned accelerate)" \
  "$(pinned datasets)" "$(pinned huggingface_hub)" "$(pinned tokenizers)" \
  "$(pinned safetensors)" "$(pinned Jinja2)" ftfy tensorboard

if [ -n "${DIFFUSERS_SCRIPT_URL:-}" ]; then
  curl -fsSL "$DIFFUSERS_SCRIPT_URL" -o "$script"
else
  git --git-dir="$diffusers_git" show "$diffusers_rev:$script_path" >"$script"
  echo "script: $diffusers_git $(git --git-dir="$diffusers_git" rev-parse "$diffusers_rev"):$script_path"
fi
"$venv/bin/python" -c "import torch, torchvision, diffusers, transformers, peft, accelerate, datasets
from torchvision import transforms
print('script venv: torch', torch.__version__, 'torchvision', torchvision.__version__,
      'diffusers', diffusers.__version__, 'transformers', transformers.__version__,
      'peft', peft.__version__, 'accelerate', accelerate.__version__, 'datasets', datasets.__version__)"
echo "run: .venv/bin/python bench/overhead.py --script-python $venv/bin/python --diffusers-script $script"
