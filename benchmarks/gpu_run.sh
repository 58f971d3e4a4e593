#!/usr/bin/env bash
# The benchmark table on a GPU machine, in one command (jaxattr on JAX's default device,
# the Captum/Zennit/torch references on cuda).
#
#   bash benchmarks/gpu_run.sh [OUTDIR] [SECONDS_PER_SCRIPT]   # e.g. $OUT 80 (about 9 min)
#
# Expects python3 with torch (CUDA), jax (CUDA), flax, optax, tqdm and transformers; Captum
# and Zennit as wheels in .whl/ when they are not installed (pip download --no-deps
# captum==0.9.0 zennit==0.5.1). Each script runs in its own process with a time limit, so a
# slow one cannot take the others' results with it; the tables are collected in
# OUTDIR/tables.md, the JSON in OUTDIR/json.tar and the log in OUTDIR/log.txt.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-/tmp/gpu_out}"
limit="${2:-150}"
mkdir -p "$out" /tmp/gpu_results
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl && export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
# jaxattr.bridge is the top-level bridge/ folder (installed that way by pip -e)
[ -e jaxattr/bridge ] || ln -s ../bridge jaxattr/bridge
export PYTHONPATH="$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1 JAXATTR_BENCH_TORCH_DEVICE=cuda
{
    date -u
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    python3 -c "import jax, torch; print('jax', jax.__version__, jax.devices(), 'torch', torch.__version__, torch.cuda.get_device_name())"
    for s in methods perturbation rules layers; do
        echo "+ bench_$s.py"
        timeout "$limit" python3 "benchmarks/bench_$s.py" --out "/tmp/gpu_results/$s.json" \
            || echo "bench_$s.py: exit $?"
    done
    echo "+ bench_llm.py (GPT-2-small config, 8 segments, 8 target tokens)"
    timeout "$((limit * 2))" python3 benchmarks/bench_llm.py --out /tmp/gpu_results/llm.json \
        || echo "bench_llm.py: exit $?"
    echo "+ bench_bridge.py"
    timeout "$limit" python3 benchmarks/bench_bridge.py --out /tmp/gpu_results/bridge.json \
        || echo "bench_bridge.py: exit $?"
    date -u
} 2>&1 | grep -v -i "warning" | tee "$out/log.txt"
cat /tmp/gpu_results/*.md > "$out/tables.md" 2>/dev/null
tar -C /tmp/gpu_results -cf "$out/json.tar" . 2>/dev/null
echo "tables in $out/tables.md"
