#!/usr/bin/env bash
# The first checks on a GPU, one command on one GPU:
#   0. the four scripts on the toy, 3 steps each, side by side (does the CUDA path run end to end?)
#   1. SmolLM2-135M-Instruct at 128 prompts x 8 rollouts x 256 new tokens: seconds per step and peak
#      memory (PrefixRL, alone on the GPU, traces collected first), next to the start-up estimate
#   2. PrefixRL and standard RL for 50 steps each on arith level 4 (32 x 8 x 256, lr 1e-5, side by side)
#
#   bash bench/gpu.sh                                   # MODEL=smollm2-135m LOGS=runs/gpu RUNS=runs/gpu
#   MODEL=/path/SmolLM2-135M-Instruct.Q4_1.gguf DEADLINE=540 bash bench/gpu.sh
#   STAGES=0 DEVICE=cpu bash bench/gpu.sh               # stage 0 alone (STAGES: the digits of the stages to run)
#   TRACES=traces-arith4-....json STEPS=20 bash bench/gpu.sh   # an earlier collection of this model's; fewer steps
#
# Logs (what the scripts print, then step_memory.py's numbers) go to $LOGS, run dirs to $RUNS. With
# DEADLINE (seconds), stage 1 gets at most half of what is left and stage 2 stops there; each reports
# the steps it took (metrics.jsonl keeps them, peak_memory.json the peaks of a run killed mid-step).
# TRACES: a traces file this model collected before (its name is its key), copied into the cache so
# stages 1-2 skip rejection sampling (its FLOPs are still charged: the file records them).
# Measured on one H200 (docs/real-lm/h200): stage 0 19 s; collection 4 min; 128x8x256 66 s a step;
# stage 2 16-23 s (PrefixRL) and 9-14 s (standard RL) a step side by side, so 50 steps take ~17 min.
set -u
cd "$(dirname "$0")/.."
MODEL=${MODEL:-smollm2-135m} LOGS=${LOGS:-runs/gpu} RUNS=${RUNS:-runs/gpu} DEVICE=${DEVICE:-cuda} STAGES=${STAGES:-012} PYTHON=${PYTHON:-python3}
STEPS=${STEPS:-50} TRACES=${TRACES:-}
START=$(date +%s) END=$(( $(date +%s) + ${DEADLINE:-100000} ))
export PYTHONUNBUFFERED=1
mkdir -p "$LOGS" "$RUNS"
quiet() { grep -v "it/s\]\|s/it\]" "$1" | grep -v "^\s*$" | tail -"$2"; }  # the logs without progress bars

[[ $STAGES == *0* ]] && for s in prefixrl standard_rl sft_rl offpolicy_rl; do
  timeout -k 10 300 $PYTHON bench/step_memory.py $s.py --device "$DEVICE" --steps 3 --hard-min 3 --hard-max 3 --n-train 16 \
    --n-heldout 16 --trace-budget 64 --eval-every 2 --final-eval-samples 4 --run-dir "$RUNS/toy_$s" \
    --cache-dir "$RUNS/cache_$s" > "$LOGS/toy_$s.log" 2>&1 &
done
[[ $STAGES == *0* ]] && { wait
  for s in prefixrl standard_rl sft_rl offpolicy_rl; do echo "== toy $s"; quiet "$LOGS/toy_$s.log" 3; done
  echo "stage 0 done at $(( $(date +%s) - START )) s"; }
[[ $STAGES == *[12]* ]] || exit 0
[[ -n $TRACES ]] && mkdir -p "$RUNS/cache" && cp "$TRACES" "$RUNS/cache/"

ARITH="--model $MODEL --task arith --level 4 --n-train 64 --n-heldout 64 --trace-budget 128 --max-new-tokens 256
       --device $DEVICE --threads 4 --cache-dir $RUNS/cache"
[[ $STAGES == *1* ]] && timeout -k 30 $(( (END - $(date +%s)) / 2 )) $PYTHON bench/step_memory.py prefixrl.py $ARITH --prompts-per-step 128 --rollouts 8 --steps 4 --eval-every 100 \
  --eval-samples 1 --final-eval-samples 1 --save-every 1000 --run-dir "$RUNS/step128" > "$LOGS/step128.log" 2>&1
[[ $STAGES == *1* ]] && { echo "== 128x8x256"; quiet "$LOGS/step128.log" 8; cat "$RUNS/step128/time.jsonl" "$RUNS/step128/peak_memory.json" 2>/dev/null
  echo "stage 1 done at $(( $(date +%s) - START )) s"; }
[[ $STAGES == *2* ]] || exit 0

LEFT=$(( END - $(date +%s) - 30 ))
for s in prefixrl standard_rl; do
  timeout -k 30 $LEFT $PYTHON bench/step_memory.py $s.py $ARITH --prompts-per-step 32 --rollouts 8 --steps $STEPS --lr 1e-5 \
    --eval-every 10 --eval-samples 4 --final-eval-samples 8 --save-every 1000 --run-dir "$RUNS/r50_$s" > "$LOGS/r50_$s.log" 2>&1 &
done
wait
for s in prefixrl standard_rl; do echo "== $STEPS steps, $s"; quiet "$LOGS/r50_$s.log" 6; done
$PYTHON - "$RUNS" <<'EOF'
import json, sys
for s in ("prefixrl", "standard_rl"):  # the no-prefix evaluations along the way: train pool and held-out pass@1
    rows = [json.loads(line) for line in open(f"{sys.argv[1]}/r50_{s}/metrics.jsonl")]
    evals = [r for r in rows if any(k.startswith("eval/") for k in r)]
    print(s, [(r["step"], {k: round(v, 3) for k, v in r.items() if k.endswith("pass@1")}) for r in evals])
EOF
echo "stage 2 done at $(( $(date +%s) - START )) s"
