#!/bin/bash
# the resnet18_narrow half of run.sh (its first start failed on another engineer's half-finished import)
cd /work/main
git rev-parse HEAD > runs/vit-cpu/commit-resnet.txt
echo "== resnet18_narrow $(date -u +%FT%TZ)"
/usr/bin/time -v python -m gradmask compare --dataset cifar10 --data ../shared/data/cifar10-jpeg.tar.gz \
  --model resnet18_narrow --groups 4 --variants none,lateral --seeds 2 --epochs 2 --train-limit 5000 --test-limit 2000 \
  --batch-size 128 --lr 0.05 --schedule onecycle --no-progress --out runs/vit-cpu/resnet18_narrow
echo "== resnet18_narrow done rc=$? $(date -u +%FT%TZ)"
