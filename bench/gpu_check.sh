#!/usr/bin/env bash
# GPU check for a session lent the H200 device machine (torch is there; the rest travels in .whl/).
#
# Here (once):   bash bench/gpu_wheels.sh     # the missing wheels and ../shared/photos' JPEGs, into .whl/
# Device tool:   run(command="bash bench/gpu_check.sh", carry=[".whl"], timeout_s=540)
# Dry run here:  GPU_CHECK_DEVICE=cpu GPU_CHECK_MODEL=clip-tiny bash bench/gpu_check.sh
#
# Prints, in at most 8 minutes (GPU_CHECK_BUDGET_S caps the whole run, 470 s by default; each step has a cap):
# 1. the image path stage by stage (bench.image_path): the decode threads' work per image on one host
#    core; GPU JPEG decode (torchcodec, torchvision's deprecated decoder beside it), the tensor
#    preprocess and the forward at batch 256, for 1 MP and tiny JPEGs; the engine's whole batch per
#    path, with and without overlap, with the host CPU per image; each path's parity with open_clip's
#    PIL transform + fp32 forward, in fp16 and in bf16; a hostile batch (one corrupt JPEG in 8) and the
#    GPU memory around it;
# 2. the pure forward at batch 256 and 512, fp16 and bf16 (bench.limit);
# 3. the process model (bench.engine): WORKERS=8,4,2 (GPU_CHECK_ENGINE_WORKERS), each as a model replica per
#    worker (ENGINE_PROCESS=off) and as one engine process fed by every worker (on), with the `gpu`
#    settings below and STATE_URL on a local redis-server; tiny and 1 MP JPEGs from a photo server
#    (C=64 x B=32): images/s, server CPU per image (the engine process's apart), the server's own stage
#    means (download, decode, queue wait, forward and its batch size), GPU busy %;
# 4. end to end through one server (bench.gpu_e2e), per group of settings (GPU_CHECK_CONFIGS, `gpu`
#    then `before` while the budget lasts): `gpu` is TORCH_THREADS=1 CUDA_BLOCKING_WAIT=1
#    IMAGE_PREPROCESS=tensor JPEG_DECODE=engine ENGINE_OVERLAP=1, `before` the defaults: 1 MP and tiny
#    JPEGs as uploads and as URLs (C=32 x B=32), server CPU per image, GPU busy %, the idle single-image
#    p50, and a py-spy profile of the server under tiny uploads.
# `bash bench/gpu_check.sh workers` runs bench.workers' WORKERS=1,2,4[,nproc/2] replicas step alone (3-4 min).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
DEV=${GPU_CHECK_DEVICE:-cuda}
# The wheels are for the device's Python (3.12); a CPU dry run here uses the environment it runs in.
if [ "$DEV" != cpu ] && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD:$PWD/client PATH=/tmp/site/bin:$PATH
else
  export PYTHONPATH=$PWD:$PWD/client${PYTHONPATH:+:$PYTHONPATH}
fi
PY=python3
# GPU_CHECK_DEVICE and GPU_CHECK_MODEL are there to dry-run the script on a CPU machine.
MODEL=${GPU_CHECK_MODEL:-ViT-B-32}
DUR=${GPU_CHECK_SECONDS:-6}
BUDGET=${GPU_CHECK_BUDGET_S:-470}
BATCH=${GPU_CHECK_BATCH:-$([ "$DEV" = cpu ] && echo 32 || echo 256)}
PHOTOS=${GPU_CHECK_PHOTOS:-.whl/photos}
[ -d "$PHOTOS" ] || PHOTOS=../shared/photos  # the benches generate photos where this is missing too
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
$PY -c "import torch, open_clip; print('torch', torch.__version__, 'open_clip', open_clip.__version__, torch.cuda.is_available() and torch.cuda.get_device_name())"
$PY -c "import torchcodec; print('torchcodec', torchcodec.__version__)" || echo "torchcodec missing: JPEG_DECODE=engine cannot run"

if [ "${1:-}" = "workers" ]; then
  WORKERS_LIST=${GPU_CHECK_WORKERS:-1,2,4}
  HALF=$(( $(nproc) / 2 ))
  if [ -z "${GPU_CHECK_WORKERS:-}" ] && [ "$HALF" -gt 4 ]; then WORKERS_LIST="$WORKERS_LIST,$HALF"; fi
  echo "== WORKERS=$WORKERS_LIST model replicas on this GPU ($MODEL, $DEV), each with STATE_URL (bench.workers)"
  timeout 300 $PY -m bench.workers --model "$MODEL" --device "$DEV" --workers "$WORKERS_LIST" --parts scaling \
    --repeats 1 --duration $(( DUR / 2 > 1 ? DUR / 2 : 2 )) -c 64 -b 32 || echo "workers run failed or timed out"
  exit 0
fi

left() { local l=$(( BUDGET - SECONDS )); echo $(( l > 1 ? l : 1 )); }  # never 0: `timeout 0` never times out
cap() { echo $(( $(left) < $1 ? $(left) : $1 )); }  # a step's cap, within what is left of the budget
echo "== 1. the image path stage by stage ($MODEL, $DEV, batch $BATCH)"
timeout "$(cap 85)" $PY -m bench.image_path --device "$DEV" --model "$MODEL" --dtype fp16 \
  --batch "$BATCH" --seconds 1 --photos "$PHOTOS" || echo "bench.image_path failed or timed out"

echo "== 1b. parity in bf16"
timeout "$(cap 30)" $PY -m bench.image_path --device "$DEV" --model "$MODEL" --dtype bf16 --parts parity --photos "$PHOTOS" \
  || echo "bf16 parity failed or timed out"

echo "== 2. pure forward, random weights ($MODEL, $DEV)"
for dtype in fp16 bf16; do
  timeout "$(cap 22)" $PY -m bench.limit --device "$DEV" --model "$MODEL" --dtype $dtype --batches "$BATCH,$(( BATCH * 2 ))" \
    --seconds 1 --no-text --no-decode || echo "bench.limit $dtype failed or timed out"
done

# The settings issue 24 built for a GPU (bench.gpu_e2e's `gpu` group), for both process models of step 3.
GPU_SETTINGS="TORCH_THREADS=1 CUDA_BLOCKING_WAIT=1 IMAGE_PREPROCESS=tensor JPEG_DECODE=engine ENGINE_OVERLAP=1"
ENGINE_WORKERS=${GPU_CHECK_ENGINE_WORKERS:-8,4,2}  # the largest first: a run cut by its cap loses the smallest
echo "== 3. engine process (ENGINE_PROCESS=on) against a replica per worker (off): WORKERS=$ENGINE_WORKERS, $GPU_SETTINGS"
env $GPU_SETTINGS timeout "$(cap 235)" $PY -m bench.engine --model "$MODEL" --device "$DEV" --workers "$ENGINE_WORKERS" \
  --repeats 1 --duration $(( DUR / 2 > 2 ? DUR / 2 : 2 )) -c 64 -b 32 --photos "$PHOTOS" \
  || echo "bench.engine failed or timed out"

# Each server group takes about 20 s to start and 5.5 loads of DUR seconds (plus one profiled load).
PER_CONFIG=$(( 25 + DUR * 7 ))
CONFIGS=${GPU_CHECK_CONFIGS:-gpu,before}
while [ $(( $(echo "$CONFIGS" | tr ',' '\n' | wc -l) * PER_CONFIG )) -gt "$(left)" ] && [ "${CONFIGS%,*}" != "$CONFIGS" ]; do
  echo "(${CONFIGS##*,} dropped: $(left) s left of the budget)"
  CONFIGS=${CONFIGS%,*}
done
echo "== 4. end to end through one server: $CONFIGS"
timeout "$(left)" $PY -m bench.gpu_e2e --model "$MODEL" --device "$DEV" --configs "$CONFIGS" --duration "$DUR" \
  --photos "$PHOTOS" --profile || echo "bench.gpu_e2e failed or timed out"
echo "== done in ${SECONDS} s"
