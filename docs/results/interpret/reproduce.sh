#!/usr/bin/env bash
# Everything behind docs/interpretation.md, from a fresh clone (after `make install data`).
# ≈25 min on 2 CPU cores, most of it training the small AlexNets.
set -euo pipefail
cd "$(dirname "$0")/../../.."
. .venv/bin/activate
R=docs/results/interpret
AX="--set model.arch=small_alexnet --set data.image_size=32 --set data.limit=20000"

# 1. the models: DeepCluster LeNet-5 (2 seeds), supervised LeNet-5, DeepCluster and supervised
#    small AlexNet on Fashion-MNIST (the random ones are the init checkpoints of the runs)
[ -f runs/demo/checkpoint.pt ]        || deepcluster train -c configs/fmnist_lenet.yaml -o runs/demo -q
[ -f runs/lenet_dc_s1/checkpoint.pt ] || deepcluster train -c configs/fmnist_lenet.yaml --set seed=1 -o runs/lenet_dc_s1 -q
[ -f runs/lenet_sup/checkpoint.pt ]   || deepcluster train -c configs/fmnist_lenet.yaml --set supervised=true --set cycles=5 -o runs/lenet_sup -q
[ -f runs/salex_dc/checkpoint.pt ]    || deepcluster train -c configs/fmnist_lenet.yaml $AX --set cycles=6 -o runs/salex_dc -q
[ -f runs/salex_sup/checkpoint.pt ]   || deepcluster train -c configs/fmnist_lenet.yaml $AX --set supervised=true --set cycles=4 -o runs/salex_sup -q

# 2. dissect the last conv layer of each on the built-in concept probe
deepcluster concepts make runs/concept_probe -q
D="deepcluster dissect --concepts runs/concept_probe -q"
$D runs/demo --checkpoint init --layer conv2 -o runs/dissect/lenet_random
$D runs/demo                   --layer conv2 -o runs/dissect/lenet_deepcluster
$D runs/lenet_dc_s1            --layer conv2 -o runs/dissect/lenet_deepcluster_s1
$D runs/lenet_sup              --layer conv2 -o runs/dissect/lenet_supervised
$D runs/salex_dc --checkpoint init --layer conv5 -o runs/dissect/salex_random
$D runs/salex_dc               --layer conv5 -o runs/dissect/salex_deepcluster
$D runs/salex_sup              --layer conv5 -o runs/dissect/salex_supervised

# 3. downstream results, the Learned Concepts Embedding, CKA and pairwise ensembles
python $R/performance.py > $R/performance.csv
deepcluster lce runs/dissect/* --performance $R/performance.csv -o $R/lce > $R/lce.log
N="--name lenet_deepcluster --name lenet_deepcluster_s1 --name lenet_supervised"
deepcluster similarity runs/demo runs/lenet_dc_s1 runs/lenet_sup $N --sample 2000 -o $R/similarity -q > $R/similarity.log
deepcluster ensemble runs/demo runs/lenet_dc_s1 runs/lenet_sup $N --layer conv2 --lce $R/lce/lce.csv -o $R/ensemble -q > $R/ensemble.log
