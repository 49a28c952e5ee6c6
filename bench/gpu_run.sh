#!/bin/bash
# Every GPU check of rnnc in one command, for a lent GPU machine (JAX with CUDA, PyTorch,
# pytest and pytest-xdist installed there; lark and rnnc carried as wheels). Prepare here:
#
#   python bench/gpu_check.py --emit .gpu --unroll 1,10 --autodiff
#   rm -rf .whl && pip wheel -q --no-deps --no-build-isolation . -w .whl \
#     && pip download -q --no-deps lark -d .whl
#
# then run `bash bench/gpu_run.sh` on the GPU machine with .gpu and .whl carried and OUT
# set to a folder for the logs (gpu_check.log, train.log, run.json, pytest.log,
# failures.txt). It prints the GPU-vs-CPU agreement and the speed table against cuDNN at
# B = 32 and B = 256 (bench/gpu_check.py), trains the README's job on the GPU and
# evaluates it, and runs the test suite with JAX on the GPU, each failure written to
# failures.txt as it happens (bench/pytest_failures_now.py), so a run cut short by its
# time limit still says what failed. About 7 minutes on an H100.
set -u
OUT=${OUT:?set OUT to a folder for the logs}
R=$PWD
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
nvidia-smi -L
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$R/bench
rnnc_() { (cd /tmp && python3 -c "import sys; sys.argv[0] = 'rnnc'; from rnnc.__main__ import main; sys.exit(main())" "$@"); }
(cd /tmp && python3 -c "import jax, optax, numpy, torch, rnnc; print('jax', jax.__version__, 'optax', optax.__version__, 'numpy', numpy.__version__, 'torch', torch.__version__, jax.devices())")
echo "=== bench/gpu_check.py, B = 32"
timeout 150 python3 bench/gpu_check.py --module .gpu/charlm_jax.py --module .gpu/charlm_jax_u1.py \
  --module .gpu/charlm_jax_u10.py --module .gpu/charlm_jax_autodiff.py --steps 30 2>&1 | tee "$OUT/gpu_check.log"
echo "=== bench/gpu_check.py, B = 256"
timeout 120 python3 bench/gpu_check.py --module .gpu/charlm_jax.py --batch 256 --steps 20 2>&1 | tee -a "$OUT/gpu_check.log"
echo "=== the README's job on the GPU"
mkdir -p /tmp/w
( time rnnc_ train "$R/specs/embedded_reber_lstm.yaml" --out /tmp/w/reber -q --force ) 2>&1 | tail -25 | tee "$OUT/train.log"
rnnc_ eval /tmp/w/reber 2>&1 | tail -8 | tee -a "$OUT/train.log"
cp /tmp/w/reber/run.json "$OUT/run.json" 2>/dev/null
echo "=== the test suite, JAX on the GPU"
timeout 260 pytest -q -n 14 -p no:cacheprovider -p no:benchmark -p pytest_failures_now \
  --timeout 150 tests > "$OUT/pytest.log" 2>&1
tail -5 "$OUT/pytest.log"
grep '^===== ' "$OUT/failures.txt" 2>/dev/null | sort -u
