#!/bin/bash
# vit_tiny vs resnet18_narrow on CIFAR-10, none vs lateral, 2 seeds, the same small budget (CPU, 1 thread)
cd /work/main
git rev-parse HEAD > runs/vit-cpu/commit.txt
for model in vit_tiny resnet18_narrow; do
  echo "== $model $(date -u +%FT%TZ)"
  /usr/bin/time -v python -m gradmask compare --dataset cifar10 --data ../shared/data/cifar10-jpeg.tar.gz \
    --model $model --groups 4 --variants none,lateral --seeds 2 --epochs 2 --train-limit 5000 --test-limit 2000 \
    --batch-size 128 --lr 0.05 --schedule onecycle --no-progress --out runs/vit-cpu/$model
  echo "== $model done rc=$? $(date -u +%FT%TZ)"
done
