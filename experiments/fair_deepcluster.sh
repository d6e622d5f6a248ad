#!/usr/bin/env bash
# Start from FAIR's DeepCluster (docs/fair_deepcluster.md): import the AlexNet checkpoint as a run
# folder, evaluate it per layer, dissect it, compare it with a run of your own, and continue
# DeepCluster from it on your images. Every command of the docs page, in order, timed.
#
#   bash experiments/fair_deepcluster.sh [WORKDIR] [CHECKPOINT]
#
# CHECKPOINT is FAIR's file (alexnet/checkpoint.pth.tar of facebookresearch/deepcluster's
# download_model.sh). Without one, a stand-in with random weights is written in FAIR's exact
# layout by tests/fair_v1.py (nothing is downloaded here). The images are real: 300 Fashion-MNIST
# training images as PNG files in one subfolder per class (`make data`).
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
WORK=${1:-$(mktemp -d /tmp/fair_deepcluster.XXXX)}
CKPT=${2:-}
mkdir -p "$WORK" && cd "$WORK"
echo "# working in $WORK"
if [ -z "$CKPT" ]; then
  CKPT=$WORK/checkpoint.pth.tar
  python "$REPO/tests/fair_v1.py" alexnet "$CKPT"
fi
python - <<'EOF'
from pathlib import Path

import numpy as np
from PIL import Image

from deepcluster.data import load_dataset

classes = ["tshirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot"]
data = load_dataset("fashion-mnist", split="train", limit=300, seed=1)
for i, (x, y) in enumerate(zip(data.images, data.labels)):
    folder = Path("my_images") / classes[int(y)]
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(x[0])).save(folder / f"{i:05d}.png")
print("my_images/: 300 PNG files in 10 class folders")
EOF
t() { local s=$SECONDS; echo "+ $*"; "$@"; echo "# $(( SECONDS - s )) s"; }
t deepcluster train -c imagenet_alexnet --set init="$CKPT" --set cycles=0 --set data.root=my_images \
    --set k=30 --set pca_dim=32 -o runs/fair -q
t deepcluster evaluate runs/fair --protocols linear,knn -q
t deepcluster concepts make probe --n-images 100 --size 64
t deepcluster dissect runs/fair --layer conv5 --concepts probe -q
t deepcluster train -c imagenet_alexnet --set data.root=my_images --set k=30 --set pca_dim=32 --set cycles=2 \
    -o runs/mine -q
t deepcluster similarity runs/fair runs/mine --sample 200 -q
t deepcluster similarity runs/mine runs/mine --weights - --weights "$CKPT" --layers conv5,fc2 --sample 200 -q
t deepcluster train --resume runs/fair --set cycles=1 -q
t deepcluster evaluate runs/fair --protocols knn -q
