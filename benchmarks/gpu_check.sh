#!/usr/bin/env bash
# On a lent CUDA machine: the gpu-marked tests, then one epoch of each sentiment set with QLoRA (nf4),
# printing accuracy and samples/s. Written to fit in 10 minutes on one modern GPU; it has NOT been run
# yet (no GPU was lent when it was written), so its first run is its test.
#
#   bash benchmarks/gpu_check.sh            # from the repository root, next to ../shared/data
#
# Needs the project installed with a CUDA build of torch (the CPU pin in pyproject.toml does not
# reach a GPU): pip install torch --index-url https://download.pytorch.org/whl/cu124, then
# pip install --no-deps -e . and the llm extra's other packages.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
DATA=${DATA:-../shared/data}
OUT=${OUT:-$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX")}

"$PY" - <<'EOF'
import torch
assert torch.cuda.is_available(), "no CUDA device: this script is for a lent GPU machine"
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name(0)}")
EOF

echo "== gpu-marked tests"
"$PY" -m pytest -q -m gpu tests/

train() {  # name, then the train command's data flags
    local name=$1; shift
    local started=$SECONDS
    "$PY" -m engine train sentiment "$@" --precision nf4 --epochs 1 --lora-top-layers 0 --batch-size 32 \
        --out "$OUT/$name" --json > "$OUT/$name.json"
    "$PY" - "$OUT/$name.json" "$name" $((SECONDS - started)) <<'EOF'
import json, sys
m = json.load(open(sys.argv[1]))
fit, val = m["fit"], m["validation"]
print(f"{sys.argv[2]}: validation accuracy {val['accuracy']:.3f}, macro-F1 {val['macro_f1']:.3f}; "
      f"{m['train_samples']} samples, {fit['steps']} steps, "
      f"{fit['steps'] * 32 / fit['seconds']:.1f} samples/s; {sys.argv[3]} s in all")
EOF
}

echo "== one epoch of Financial PhraseBank 50-agree, QLoRA nf4, LoRA on every layer"
train phrasebank --data "$DATA/sentiment/financial_phrasebank/Sentences_50Agree.txt"
echo "== one epoch of Twitter financial news, QLoRA nf4"
train twitter --data "$DATA/sentiment/twitter_financial_news/sent_train.csv" --label-map twitter \
    --test "$DATA/sentiment/twitter_financial_news/sent_valid.csv"
echo "checkpoints and metrics in $OUT"
