"""`deepcluster data ingest` / `verify`: folders, tar shards and known datasets into one
random-access file; bad images skipped and listed; a killed ingest continues; checksums."""

import csv
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time

import numpy as np
import pytest
import torch
from PIL import Image

from deepcluster.core.errors import DataError
from deepcluster.data import load_dataset
from deepcluster.data.base import FolderImageDataset
from deepcluster.data.pool_reader import IngestedDataset
from deepcluster.data.pool_writer import ingest, verify
from deepcluster.data.source import ImageSource

from .formats import make_idx_dataset, make_image_folder


def _png_bytes(seed: int, size=(20, 14)) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _noisy_folder(root, per_class=(5, 4)):
    for c, n in enumerate(per_class):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(n):
            (root / f"class{c}" / f"{i}.png").write_bytes(_png_bytes(100 * c + i))
    return root


def test_folder_ingest_keeps_every_pixel_and_lists_bad_files(tmp_path):
    src = _noisy_folder(tmp_path / "src")
    (src / "class0" / "corrupt.png").write_bytes(b"this is not a png")
    (src / "class1" / "truncated.png").write_bytes(_png_bytes(7, (64, 64))[:300])
    manifest = ingest(src, tmp_path / "out", size=16, workers=2, show_progress=False)
    assert manifest["n"] == 9 and manifest["skipped"] == 2 and manifest["classes"] == ["class0", "class1"]
    with open(tmp_path / "out" / "skipped.csv") as f:
        skipped = {os.path.basename(r["path"]) for r in csv.DictReader(f)}
    assert skipped == {"corrupt.png", "truncated.png"}

    ds = IngestedDataset(tmp_path / "out")
    good = [p for p in sorted(src.rglob("*.png")) if p.name not in skipped]
    expected = FolderImageDataset("folder", [str(p) for p in good], 16).images_tensor()
    order = np.argsort([str(p) for p in ds.paths])
    assert torch.equal(ds.images_tensor()[torch.as_tensor(order)], expected)
    assert ds.labels.tolist() == [0] * 5 + [1] * 4
    assert torch.equal(ds.read([3, 1]), ds.images_tensor()[[3, 1]])
    assert torch.equal(ds.subset([8, 2])[0], ds[8])
    assert verify(tmp_path / "out")["n"] == 9
    assert not (tmp_path / "out" / ".ingest").exists()

    # a damaged pixel file: verify names it
    pixels = tmp_path / "out" / "images.u8"
    data = bytearray(pixels.read_bytes())
    data[5] ^= 0xFF
    pixels.write_bytes(bytes(data))
    with pytest.raises(DataError, match="does not match its checksum"):
        verify(tmp_path / "out")
    # a truncated one: loading it names `deepcluster data verify`
    pixels.write_bytes(bytes(data[:-10]))
    with pytest.raises(DataError, match="deepcluster data verify"):
        load_dataset("ingested", tmp_path / "out")


def _write_shard(path, start, n, with_cls=True):
    with tarfile.open(path, "w") as tar:
        for i in range(start, start + n):
            key = f"{i:09d}"
            members = {f"{key}.png" if i % 2 else f"{key}.jpg": None, f"{key}.json": json.dumps({"i": i}).encode()}
            if with_cls:
                members[f"{key}.cls"] = str(i % 3).encode()
            for name, data in members.items():
                if data is None:
                    img = Image.fromarray(np.full((12, 10, 3), i * 7 % 256, dtype=np.uint8))
                    buf = io.BytesIO()
                    img.save(buf, format="PNG" if name.endswith(".png") else "JPEG", quality=95)
                    data = buf.getvalue()
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def test_webdataset_shards_as_img2dataset_writes_them(tmp_path):
    shards = tmp_path / "shards"
    shards.mkdir()
    _write_shard(shards / "00000.tar", 0, 5)
    _write_shard(shards / "00001.tar", 5, 4)
    manifest = ingest(shards, tmp_path / "out", size=8, channels=1, workers=2, show_progress=False)
    assert manifest["source_kind"] == "webdataset" and manifest["n"] == 9 and manifest["skipped"] == 0
    ds = IngestedDataset(tmp_path / "out")
    assert ds.labels.tolist() == [i % 3 for i in range(9)]
    assert ds.images_tensor().shape == (9, 1, 8, 8)
    # solid images stay (nearly, for JPEG) solid at their grey level
    assert abs(int(ds[3][0, 4, 4]) - 21) <= 2 and abs(int(ds[8][0, 4, 4]) - 56) <= 2
    assert ds.paths[0].endswith("00000.tar:000000000.jpg")


def test_known_dataset_ingest_is_the_dataset(tmp_path):
    make_idx_dataset(tmp_path / "idx", n_train=30, n_test=8)
    ingest(tmp_path / "idx", tmp_path / "out", show_progress=False)
    ref = load_dataset("fashion-mnist", tmp_path / "idx")
    ds = load_dataset("ingested", tmp_path / "out")
    assert torch.equal(ds.images_tensor(), ref.images_tensor())
    assert ds.labels.tolist() == ref.labels.tolist()
    # read through DataLoader workers, in any order: the same images
    source = ImageSource(ds, streamed=True, workers=2)
    batches = [np.array([29, 0, 3]), np.array([7]), np.arange(10, 20)]
    for idx, got in zip(batches, source.batches(batches)):
        assert torch.equal(got, ref.images_tensor()[torch.as_tensor(idx)])
    # running the same command on a finished dataset changes nothing
    before = (tmp_path / "out" / "dataset.json").read_text()
    ingest(tmp_path / "idx", tmp_path / "out", show_progress=False)
    assert (tmp_path / "out" / "dataset.json").read_text() == before


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "deepcluster", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, "DEEPCLUSTER_PROGRESS": "0"}, timeout=300)


def test_killed_ingest_continues_to_the_same_file(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(2600):  # five chunks of 512 and a bit
        (src / f"{i:05d}.png").write_bytes(_png_bytes(i, (48, 48)))
    ref = _cli("data", "ingest", src, tmp_path / "ref", "--size", "16", "--workers", "0", "-q")
    assert ref.returncode == 0, ref.stderr

    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "deepcluster", "data", "ingest", str(src), str(out), "--size", "16",
                             "--workers", "0", "-q"], env={**os.environ, "DEEPCLUSTER_PROGRESS": "0"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = out / ".ingest" / "state.json"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        try:
            if json.loads(state.read_text())["written"] >= 512:
                break
        except (OSError, ValueError):
            pass
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    if (out / "dataset.json").exists():
        pytest.skip("the ingest finished before it could be killed")
    with pytest.raises(DataError, match="unfinished ingest"):
        load_dataset("ingested", out)

    res = _cli("data", "ingest", src, out, "--size", "16", "--workers", "0", "-q")
    assert res.returncode == 0, res.stderr
    assert (out / "images.u8").read_bytes() == (tmp_path / "ref" / "images.u8").read_bytes()
    assert (out / "index.csv").read_text() == (tmp_path / "ref" / "index.csv").read_text()
    a, b = (json.loads((d / "dataset.json").read_text())["sha256"] for d in (out, tmp_path / "ref"))
    assert a == b
    ok = _cli("data", "verify", out)
    assert ok.returncode == 0 and "ok, 2600 images" in ok.stdout


@pytest.mark.parametrize("case", ["missing", "small", "file", "other-ingest", "truncated"])
def test_bad_inputs_are_one_line_and_exit_2(tmp_path, case):
    src = make_image_folder(tmp_path / "src")
    args = ["data", "ingest", src, tmp_path / "out", "-q"]
    if case == "missing":
        args[2] = tmp_path / "nowhere"
        expect = "does not exist"
    elif case == "small":
        args += ["--size", "4"]
        expect = "at least 8 px"
    elif case == "file":
        (tmp_path / "out").write_text("x")
        expect = "is a file"
    elif case == "other-ingest":
        (tmp_path / "out" / ".ingest").mkdir(parents=True)
        (tmp_path / "out" / ".ingest" / "state.json").write_text(json.dumps({"fingerprint": "another", "next": 0}))
        expect = "unfinished ingest of another source"
    else:
        assert _cli(*args).returncode == 0
        pixels = tmp_path / "out" / "images.u8"
        pixels.write_bytes(pixels.read_bytes()[:-1])
        args = ["data", "verify", tmp_path / "out"]
        expect = "deepcluster data verify"
    res = _cli(*args)
    assert res.returncode == 2, res.stderr
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and expect in " ".join(res.stderr.split()), res.stderr
    assert "Traceback" not in res.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs to fill needs root")
def test_full_disk_during_ingest_is_one_line_and_resumable(tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("mount -t tmpfs is not permitted here")
    try:
        src = tmp_path / "src"
        src.mkdir()
        for i in range(1400):
            (src / f"{i:04d}.png").write_bytes(_png_bytes(i, (8, 8)))
        # 1,200 bytes an image: the first chunk of 512 fits the 1 MB disk, all 1,400 do not
        res = _cli("data", "ingest", src, mnt / "out", "--size", "20", "--workers", "0", "-q")
        assert res.returncode == 2, res.stderr
        assert "disk is full" in res.stderr and "Traceback" not in res.stderr
        assert len([line for line in res.stderr.splitlines() if line.strip()]) == 1
        state = json.loads((mnt / "out" / ".ingest" / "state.json").read_text())
        assert 0 < state["written"] < 1400  # the chunks made durable before the disk filled are kept
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)
