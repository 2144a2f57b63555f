#!/usr/bin/env bash
# The GPU path, on a GPU machine with no network (the lent device): from the repository root,
#
#   bash bench/gpu_check.sh [OUT]          (OUT: where the logs and results go, default bench/results/gpu)
#
# The machine's image brings PyTorch, Lightning, transformers and torchmetrics. What sppo-pl needs beyond
# them travels in .gpu/ (add /.gpu/ to .git/info/exclude), prepared where PyPI is reachable, after `make model`:
#   .gpu/wheels   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#                   --platform manylinux_2_17_x86_64 -d .gpu/wheels hydra-core==1.3.8 omegaconf==2.3.1 \
#                   datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 math-verify==0.9.0 \
#                   latex2sympy2_extended==1.11.0 trl==1.16.0      (trl: the bench's comparison only)
#   .gpu/pure     cp -r .venv/lib/python3.*/site-packages/antlr4{,_python3_runtime-4.9.3.dist-info} .gpu/pure/
#                 (antlr4 4.9.3 and its metadata, which latex2sympy2 checks: PyPI has no wheel of it)
#   .gpu/smollm2  SmolLM2-135M-Instruct's files but model.safetensors (too big to travel): the training-step
#                 bench runs on random weights of that shape (its timings do not depend on the values)
# Runs: tests/test_gpu.py (the loop on CUDA in bf16-mixed: one device, FSDP2, FSDP1), then bench.train_step
# on CUDA (the default batch, then a larger one, with a torch.profiler table of its step), each against TRL.
set -uo pipefail
out=${1:-bench/results/gpu}
mkdir -p "$out"
if [ -d .gpu/wheels ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .gpu/wheels/*.whl || exit 1
    export PYTHONPATH=/tmp/site:$PWD/.gpu/pure:$PWD SPPO_BENCH_TRL=/tmp/site
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 WANDB_MODE=disabled
{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    python3 -c "import sys, torch, lightning, transformers; print(sys.version.split()[0], 'torch', torch.__version__, 'lightning', lightning.__version__, 'transformers', transformers.__version__)"
    python3 -c "import vllm; print('vllm', vllm.__version__)" 2>&1 | tail -1
    python3 -c "import flash_attn; print('flash_attn', flash_attn.__version__)" 2>&1 | tail -1
} 2>&1 | tee "$out/env.txt"

python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_gpu.py 2>&1 | tee "$out/tests.txt"

model=/tmp/smollm2-135m-random
python3 - "$model" <<'PY'
import shutil, sys
import torch
from transformers import AutoConfig, AutoModelForCausalLM
torch.manual_seed(0)
shutil.copytree(".gpu/smollm2", sys.argv[1], dirs_exist_ok=True)
AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(sys.argv[1])).save_pretrained(sys.argv[1])
PY
python3 -m bench.train_step --model "$model" --device cuda 2>&1 | tail -12
for f in bench/results/train_step_cuda.*; do cp "$f" "$out/small_${f##*/}"; done
python3 -m bench.train_step --model "$model" --device cuda --pairs 32 --response-words 400 --profile 2>&1 | tail -12
cp bench/results/train_step_cuda.* bench/results/train_step_cuda_profile.txt "$out/"
