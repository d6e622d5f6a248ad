#!/usr/bin/env bash
# A newcomer's first hour, from a directory outside the repository: train by preset name on a
# folder of images, move the run folder and the images, evaluate and report with --data-root,
# then assign 100 images the run has never seen to its clusters.
#
#   bash experiments/first_hour.sh [WORKDIR]        (about 3 minutes on 2 cores)
#
# The images are real: 3,000 Fashion-MNIST training images and 100 test images written as PNG
# files in one subfolder per class (Debian's dataset-fashion-mnist; `make data`).
set -euo pipefail
WORK=${1:-$(mktemp -d /tmp/first_hour.XXXX)}
mkdir -p "$WORK" && cd "$WORK"
echo "# working in $WORK"
python - <<'EOF'
from pathlib import Path

import numpy as np
from PIL import Image

from deepcluster.data import load_dataset

classes = ["tshirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot"]
for split, n, out in (("train", 3000, "my_images"), ("test", 100, "new_images")):
    data = load_dataset("fashion-mnist", split=split, limit=n, seed=1)
    for i, (x, y) in enumerate(zip(data.images, data.labels)):
        folder = Path(out) / classes[int(y)]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.asarray(x[0])).save(folder / f"{split}_{i:05d}.png")
    print(f"{out}/: {n} PNG files in {len(set(map(int, data.labels)))} class folders")
EOF
set -x
deepcluster list
deepcluster train -c fmnist_lenet --set data.name=folder --set data.root=my_images --set data.image_size=28 \
    --set cycles=5 --set epochs_per_cycle=5 --set k=30 --set pca_dim=32 -o runs/mine -q
mkdir -p elsewhere && mv runs/mine elsewhere/run && mv my_images elsewhere/images
cd /
deepcluster evaluate "$WORK/elsewhere/run" --protocols linear,knn -q || true   # the data moved: one line
deepcluster evaluate "$WORK/elsewhere/run" --data-root "$WORK/elsewhere/images" --protocols linear,knn -q
deepcluster report "$WORK/elsewhere/run" --data-root "$WORK/elsewhere/images" -q
deepcluster assign "$WORK/elsewhere/run" "$WORK/new_images" --out "$WORK/new_clusters.csv" -q
head -5 "$WORK/new_clusters.csv"
