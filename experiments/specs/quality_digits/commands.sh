#!/bin/bash
# Sample quality on digits 8x8 (issue 8.1): FD to held-out images in three offline feature spaces
# (the cached classifier, pca:16, pixels) and the held-out loss gap, for the optimum, a
# Tikhonov-regularized optimum, a second held-out set (the real-vs-real floor) and the snapshots of
# one tiny DDPM++ trained for 1000 epochs on |D| = 64. Run from the repository root:
#   OMP_NUM_THREADS=1 bash experiments/specs/quality_digits/commands.sh WORK_DIR
# Writes WORK_DIR/... (data, run, samples; kept, so a re-run only measures again) and
# experiments/results/quality_digits/quality.jsonl, quality.csv, quality.png.
set -euo pipefail
W=${1:?work folder}; R=experiments/results/quality_digits; mkdir -p "$W"; : > $R/quality.jsonl
[ -e $W/train.zip ] || diffmem data --source digits --size 64 --labels none --out $W/train.zip --heldout-out $W/heldout.zip --heldout-size 500
# |D| = 564 takes the first 56-57 of each class, so its held-out images miss heldout.zip (ranks 6-56)
[ -e $W/train564.zip ] || diffmem data --source digits --size 564 --labels none --out $W/train564.zip --heldout-out $W/heldout2.zip --heldout-size 500
[ -e $W/optimum.npz ] || diffmem sample --optimal --train $W/train.zip --num 500 --seed 1 --out $W/optimum.npz
[ -e $W/tikhonov0.1.npz ] || diffmem sample --optimal --train $W/train.zip --num 500 --seed 1 --regularize tikhonov:0.1 --out $W/tikhonov0.1.npz
[ -e $W/run/summary.json ] || diffmem train --data $W/train.zip --out $W/run --preset tiny --channels 16 --precond edm --epochs 1000 --lr 2e-3 \
  --ema-rate 0.99 --batch 32 --snapshots 25,50,100,200,400 --no-progress
measure() {  # measure NAME SAMPLES [EPOCH SNAPSHOT]
  local q="" ; for f in classifier pca:16 pixels; do
    local net=""; [ "$f" = classifier ] && [ -n "${4:-}" ] && net="--network $4 --train $W/train.zip"
    q="$q\"$f\": $(diffmem quality --generated $2 --heldout $W/heldout.zip --features $f --source digits --json $net),"
  done
  local m=$(diffmem memorization --train $W/train.zip --generated $2 --json)
  echo "{\"name\": \"$1\", \"epoch\": ${3:-null}, $q \"memorization\": $m}" >> $R/quality.jsonl
}
measure heldout2 $W/heldout2.zip
measure optimum $W/optimum.npz
measure tikhonov0.1 $W/tikhonov0.1.npz
for snap in $W/run/snapshot-epoch*.safetensors; do
  e=$(basename $snap .safetensors); e=$((10#${e#snapshot-epoch}))
  [ -e $W/samples-$e.npz ] || diffmem sample --network $snap --num 500 --seed 1 --out $W/samples-$e.npz
  measure net $W/samples-$e.npz $e $snap
done
python experiments/specs/quality_digits/summarize.py $R/quality.jsonl
