#!/usr/bin/env bash
# Every GPU check of sppo-pl in one go, on a GPU machine with no network (the lent device), from the repository
# root, once CUDA vLLM and the project's dependencies are unpacked into /tmp/site (../shared/gpu/README.md):
#
#   bash bench/gpu_check.sh OUT [BUDGET_S]     (OUT: where the logs go; BUDGET_S: stop starting work after it, 530)
#
# Optional: .gpu/extra/*.whl (git-ignored) is installed into /tmp/site too: TRL for bench.train_step's comparison,
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 -d .gpu/extra trl==1.16.0
# What runs (each with its own time limit; the logs go to OUT as at most 8 files, the device tool's limit):
#   1. tests, concurrently (each engine with a small fixed KV cache, so vLLM's memory profiling does not count
#      the other processes): tests/test_gpu.py (the loop in bf16-mixed: auto, sleep levels 1 and 2, FSDP2,
#      FSDP1), tests/test_vllm_sync.py (sync, untied head and log-probs, autocast, sleep/wake/sync);
#   2. bench.realistic at Qwen2.5-1.5B (rollout vLLM vs HF, sync vs copy, peak memory per sleep level);
#   3. bench.train_step at 1.5B against TRL, with a profile (which attention kernels ran);
#   4. bench.realistic at 0.5B, if time is left.
set -uo pipefail
out=${1:?usage: bash bench/gpu_check.sh OUT [BUDGET_S]}
budget=${2:-530}
mkdir -p "$out" /tmp/gpucheck
logs=/tmp/gpucheck
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 WANDB_MODE=disabled VLLM_ENABLE_V1_MULTIPROCESSING=0 \
    VLLM_USE_FLASHINFER_SAMPLER=0 TOKENIZERS_PARALLELISM=false
export PYTHONPATH=/tmp/site:$PWD
if compgen -G ".gpu/extra/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .gpu/extra/*.whl || exit 1
    export SPPO_BENCH_TRL=/tmp/site
fi
left() { echo $((budget - SECONDS)); }
backends() { grep -hoE "Using [A-Za-z_.]+ (attention )?backend[^\"]*" "$@" | sort | uniq -c; }  # vLLM's choice
summary="$out/summary.txt"
note() { echo "[$SECONDS s] $*" | tee -a "$summary"; }
{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    python3 -c "import sys, torch, lightning, transformers, vllm; print('python', sys.version.split()[0], 'torch', torch.__version__, 'lightning', lightning.__version__, 'transformers', transformers.__version__, 'vllm', vllm.__version__)"
    python3 -c "import flash_attn; print('flash_attn', flash_attn.__version__)" 2>&1 | tail -1
} 2>&1 | tee -a "$summary"

# ---- 1. tests, concurrently ------------------------------------------------------------------------------------
run_test() {  # name, seconds, pytest args...
    local name=$1 limit=$2
    shift 2
    timeout "$limit" python3 -m pytest -q -x -p no:cacheprovider -rA "$@" >"$logs/test_$name.txt" 2>&1
    echo "exit code $?" >>"$logs/test_$name.txt"
}
t=$((budget < 200 ? budget : 200))
run_test vllm_sync "$t" tests/test_vllm_sync.py &
run_test hf_rng "$t" -k cuda tests/test_engine_reference.py::test_seeded_hf_generation_leaves_the_trainers_random_streams_as_they_were &
for s in auto auto-sleep1 auto-sleep2 fsdp2 fsdp1; do
    run_test "loop_$s" "$t" "tests/test_gpu.py::test_self_play_loop_trains_on_a_gpu_in_bf16_mixed[$s]" &
    sleep 2
done
wait
for f in "$logs"/test_*.txt; do
    echo "===== ${f##*/}: $(tail -1 "$f")" | tee -a "$summary"
    grep -E "^(PASSED|FAILED|ERROR|SKIPPED)|passed|failed" "$f" | tail -12 >>"$summary"
done
tail -n 400 "$logs"/test_*.txt >"$out/tests.txt" 2>&1
backends "$logs"/test_*.txt >>"$summary"
note "tests done"

# ---- 2-4. benches, alone on the GPU ----------------------------------------------------------------------------
bench() {  # name, seconds, command...
    local name=$1 limit=$2
    shift 2
    if [ "$limit" -lt 40 ]; then note "$name skipped: $limit s left"; return; fi
    note "$name: up to $limit s"
    timeout "$limit" "$@" >"$logs/$name.log" 2>&1
    note "$name exit code $?"
    backends "$logs/$name.log" >>"$summary"
}
t=$(left); bench realistic_1.5b $((t < 200 ? t : 200)) python3 -m bench.realistic --size 1.5b --repeats 3 --out "$out"
model=/tmp/sppo-models/qwen2.5-1.5b-random
t=$(left); bench train_step_1.5b $((t < 150 ? t : 150)) python3 -m bench.train_step --model "$model" --device cuda \
    --pairs 8 --response-words 100 --repeats 3 --profile
grep -iE "flash|fmha|cudnn|efficient_attention|sdpa|attention" bench/results/train_step_cuda_profile.txt \
    >>"$summary" 2>/dev/null
cat bench/results/train_step_cuda.md >>"$summary" 2>/dev/null
t=$(left); bench realistic_0.5b $((t < 150 ? t : 150)) python3 -m bench.realistic --size 0.5b --repeats 3 --out "$out"
tar czf "$out/results.tar.gz" -C "$logs" . -C "$PWD/bench/results" train_step_cuda.json train_step_cuda.md \
    train_step_cuda_profile.txt 2>/dev/null
note "all done"
