"""Broden-format reader/writer and the built-in concept probe."""

from __future__ import annotations

import csv
import socket
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deepcluster.core.errors import DataError
from deepcluster.interpret.broden import (
    BrodenDataset,
    BrodenWriter,
    decode_mask,
    encode_mask,
    read_mask,
)
from deepcluster.interpret.concepts import (
    COLOR_NAMES,
    COLOR_PROTOTYPES,
    PHOTOS,
    QUADRANTS,
    SHAPES,
    TEXTURES,
    color_name_map,
    load_photos,
    make_concept_probe,
    photo_path,
    probe_is_made,
)


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ---------------------------------------------------------------------------------------------
# Writer -> reader round trip


def _tiny_written(root: Path):
    rng = np.random.default_rng(0)
    w = BrodenWriter(root, pixel_categories=("object", "part"), image_categories=("scene",))
    car = w.add_label("car", "object")
    wheel = w.add_label("wheel", ("object", "part"), syns=("wheel", "tyre"))
    door = w.add_label("door", "part")
    street = w.add_label("street", "scene")
    park = w.add_label("park", "scene")
    images, masks, labels = [], [], []
    for i in range(4):
        img = rng.integers(0, 256, size=(3, 8, 10), dtype=np.uint8)
        obj = np.zeros((4, 5), np.int32)
        obj[: i + 1, :2] = car
        obj[3, 4] = wheel
        part1 = np.zeros((4, 5), np.int32)
        part1[1:3, 1:3] = door
        part2 = np.zeros((4, 5), np.int32)
        part2[2, 2] = wheel  # overlaps the door: a pixel with two part labels
        m = {"object": obj, "part": [part1, part2] if i % 2 == 0 else [part1]}
        lab = {"scene": [street] if i < 3 else [street, park]}
        w.add_image(img, masks=m, labels=lab, stem=f"sub/img{i}")
        images.append(img)
        masks.append(m)
        labels.append(lab)
    assert w.close() == root
    return images, masks, labels, {"car": car, "wheel": wheel, "door": door, "street": street, "park": park}


def test_writer_reader_round_trip(tmp_path):
    images, masks, labels, ids = _tiny_written(tmp_path)
    ds = BrodenDataset(tmp_path)
    assert len(ds) == 4
    assert list(ds.categories) == ["object", "part", "scene"]
    assert ds.pixel_categories == ("object", "part") and ds.image_categories == ("scene",)
    assert {n: (lab.name, lab.category) for n, lab in ds.labels.items()} == {
        1: ("car", "object"),
        2: ("wheel", "object"),  # object(4) beats part(2)
        3: ("door", "part"),
        4: ("street", "scene"),
        5: ("park", "scene"),
    }
    assert ds.labels[2].categories == {"object": 4, "part": 2}
    assert ds.labels[2].syns == ("wheel", "tyre")
    assert ds.categories["part"].labels == (2, 3)
    assert (ds.categories["object"].first, ds.categories["object"].last, ds.categories["object"].count) == (1, 2, 2)
    for i, s in enumerate(ds):
        assert s.image.dtype == np.uint8 and np.array_equal(s.image, images[i])
        assert s.masks["object"].shape == (1, 4, 5) and np.array_equal(s.masks["object"][0], masks[i]["object"])
        assert np.array_equal(s.masks["part"], np.stack(masks[i]["part"]))
        assert s.labels["scene"].tolist() == labels[i]["scene"]
        assert s.split == "train" and s.filename == f"sub/img{i}.png"
    # statistics: car covers 2, 4, 6, 8 of 20 pixels in the four images
    assert ds.labels[ids["car"]].frequency == 4
    assert ds.labels[ids["car"]].coverage == pytest.approx((2 + 4 + 6 + 8) / 20)
    assert ds.categories["scene"].stats[ids["park"]] == (1, 1.0)
    assert ds.categories["part"].stats[ids["wheel"]] == (2, pytest.approx(2 / 20))
    # batches: zero-padded channels, concept masks
    (b,) = list(ds.batches(8))
    assert b.images.shape == (4, 3, 8, 10) and b.masks["part"].shape == (4, 2, 4, 5)
    assert not b.masks["part"][1, 1].any()
    assert b.labels["scene"].tolist() == [[4, 0], [4, 0], [4, 0], [4, 5]]
    wheel_mask = b.concept_mask(ids["wheel"])
    assert wheel_mask[:, 3, 4].all() and wheel_mask[:, 2, 2].tolist() == [True, False, True, False]
    assert b.concept_mask(ids["park"]).sum() == 20 and b.concept_mask(ids["park"])[3].all()
    chunks = list(ds.batches(3))
    assert [len(x) for x in chunks] == [3, 1]
    assert np.array_equal(chunks[1].masks["object"], b.masks["object"][3:])
    # masks and labels alone: the same arrays, no image decoded
    bare = ds.batch([2, 1], images=False)
    assert bare.images is None and bare.indices.tolist() == [2, 1] and bare.mask_shape == (4, 5)
    assert np.array_equal(bare.masks["part"], b.masks["part"][[2, 1]])
    assert np.array_equal(bare.concept_mask(ids["wheel"]), wheel_mask[[2, 1]])


def test_hand_made_broden_folder(tmp_path):
    """A folder written with csv and PIL only, in the exact NetDissect-Lite layout."""
    (tmp_path / "images" / "ade").mkdir(parents=True)
    img = np.arange(6 * 6 * 3, dtype=np.uint8).reshape(6, 6, 3)
    Image.fromarray(img).save(tmp_path / "images" / "ade" / "a.png")
    Image.fromarray(img[..., 0]).save(tmp_path / "images" / "ade" / "b.png")  # grayscale image
    color = np.zeros((3, 3, 3), np.uint8)
    color[..., 0] = 1  # label 1 everywhere
    obj = np.zeros((3, 3, 3), np.uint8)
    obj[0, 0] = (44, 1, 0)  # 44 + 256 = label 300
    obj[2, 2] = (2, 0, 0)
    Image.fromarray(color).save(tmp_path / "images" / "ade" / "a_color.png")
    Image.fromarray(obj).save(tmp_path / "images" / "ade" / "a_object.png")
    header = ["image", "split", "ih", "iw", "sh", "sw", "color", "object", "part", "material", "scene", "texture"]
    rows = [
        ["ade/a.png", "train", 6, 6, 3, 3, "ade/a_color.png", "ade/a_object.png", "", "", "5", "6;7"],
        ["ade/b.png", "val", 6, 6, 3, 3, "", "ade/a_object.png;2", "", "", "", ""],
    ]
    labels = [
        [0, "-", "", 0, 0.0, ""],  # Broden's "no label" row is tolerated
        [1, "black-c", "color(1)", 1, 1.0, "black"],
        [2, "sky", "object(2)", 2, 0.5, "sky"],
        [5, "street-s", "scene(1)", 1, 1.0, "street"],
        [6, "striped", "texture(1)", 1, 1.0, "striped"],
        [7, "dotted", "texture(1)", 1, 1.0, "dotted"],
        [300, "wheel", "object(2);part(0)", 2, 0.2, "wheel;tyre"],
    ]
    cats = {"color": [1], "object": [2, 300], "part": [300], "material": [], "scene": [5], "texture": [6, 7]}
    for name, content in (("index.csv", [header, *rows]), ("label.csv", [["number", "name", "category", "frequency", "coverage", "syns"], *labels])):
        with open(tmp_path / name, "w", newline="") as f:
            csv.writer(f).writerows(content)
    with open(tmp_path / "category.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["name", "first", "last", "count", "frequency"])
        for c, ls in cats.items():
            w.writerow([c, min(ls, default=0), max(ls, default=0), len(ls), 1])
            with open(tmp_path / f"c_{c}.csv", "w", newline="") as g:
                cw = csv.writer(g)
                cw.writerow(["code", "number", "name", "frequency", "coverage"])
                cw.writerows([k + 1, n, "x", 1, 1.0] for k, n in enumerate(ls))

    ds = BrodenDataset(tmp_path)
    assert len(ds) == 2 and 0 not in ds.labels
    assert ds.pixel_categories == ("color", "object", "part", "material")
    assert ds.image_categories == ("scene", "texture")
    assert ds.labels[300].name == "wheel" and ds.labels[300].category == "object"
    assert ds.labels[300].syns == ("wheel", "tyre") and ds.label_number("wheel") == 300
    assert ds.categories["object"].labels == (2, 300)
    a, b = ds[0], ds[1]
    assert np.array_equal(a.image, img.transpose(2, 0, 1))
    assert np.array_equal(b.image, np.repeat(img[None, ..., 0], 3, axis=0))
    assert a.masks["color"].shape == (1, 3, 3) and (a.masks["color"] == 1).all()
    assert a.masks["object"][0, 0, 0] == 300 and a.masks["object"][0, 2, 2] == 2
    assert a.masks["part"].shape == (0, 3, 3)
    assert a.labels["scene"].tolist() == [5] and a.labels["texture"].tolist() == [6, 7]
    # an integer in a pixel-level column is a whole-image mask (as in NetDissect)
    assert b.masks["object"].shape == (2, 3, 3) and (b.masks["object"][1] == 2).all()
    assert b.split == "val" and b.labels["texture"].size == 0
    assert a.concept_mask(300).sum() == 1 and a.concept_mask(7).all() and b.concept_mask(2).all()
    with pytest.raises(ValueError):
        a.concept_mask(0)
    only = BrodenDataset(tmp_path, categories=["object"])
    assert list(only.categories) == ["object"] and list(only[0].masks) == ["object"] and only[0].labels == {}


def test_writer_rejects_unregistered_labels(tmp_path):
    w = BrodenWriter(tmp_path, pixel_categories=("object",), image_categories=("scene",))
    car = w.add_label("car", "object")
    street = w.add_label("street", "scene")
    img = np.zeros((4, 4), np.uint8)
    with pytest.raises(ValueError, match="not registered in category 'object'"):
        w.add_image(img, masks={"object": np.full((4, 4), street)})
    with pytest.raises(ValueError, match="not registered in category 'scene'"):
        w.add_image(img, labels={"scene": [car]})
    with pytest.raises(ValueError, match="not a pixel-level category"):
        w.add_image(img, masks={"scene": np.zeros((4, 4), np.int32)})
    assert not any((tmp_path / "images").iterdir())  # nothing written for rejected images


def test_mask_encoding_above_255(tmp_path):
    ids = np.array([[0, 1, 255], [256, 300, 65535]])
    rgb = encode_mask(ids)
    assert rgb.dtype == np.uint8 and rgb[1, 1].tolist() == [44, 1, 0]
    assert np.array_equal(decode_mask(rgb), ids)
    Image.fromarray(rgb).save(tmp_path / "m.png")
    assert np.array_equal(read_mask(tmp_path / "m.png"), ids)
    with pytest.raises(ValueError):
        encode_mask(np.array([[65536]]))


# ---------------------------------------------------------------------------------------------
# Errors


def test_missing_index_csv(tmp_path):
    _tiny_written(tmp_path)
    (tmp_path / "index.csv").unlink()
    with pytest.raises(DataError, match="index.csv"):
        BrodenDataset(tmp_path)


def test_missing_folder_columns_and_files(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        BrodenDataset(tmp_path / "nope")
    _tiny_written(tmp_path)
    (tmp_path / "c_part.csv").unlink()
    with pytest.raises(DataError, match="c_part.csv"):
        BrodenDataset(tmp_path)
    with pytest.raises(DataError, match="no category material"):
        BrodenDataset(tmp_path, categories=["material"])
    ds = BrodenDataset(tmp_path, categories=["object", "scene"])
    (tmp_path / "images" / "sub" / "img1_object.png").unlink()
    with pytest.raises(DataError, match="img1_object.png"):
        ds[1]
    (tmp_path / "label.csv").write_text("number,name\n1,car\n")
    with pytest.raises(DataError, match=r"label.csv lacks column\(s\) category, frequency, coverage, syns"):
        BrodenDataset(tmp_path)


# ---------------------------------------------------------------------------------------------
# Colour names


def test_color_names_of_pure_colors():
    pure = {
        "red": (255, 0, 0),
        "green": (0, 255, 0),
        "blue": (0, 0, 255),
        "yellow": (255, 255, 0),
        "white": (255, 255, 255),
        "black": (0, 0, 0),
        "grey": (128, 128, 128),
        "orange": (255, 165, 0),
        "purple": (128, 0, 128),
        "pink": (255, 192, 203),
        "brown": (139, 69, 19),
    }
    names = color_name_map(np.array([list(pure.values())], dtype=np.uint8))
    assert [COLOR_NAMES[k] for k in names[0]] == list(pure)
    for name, protos in COLOR_PROTOTYPES.items():
        got = color_name_map(np.array(protos, dtype=np.uint8))
        assert all(COLOR_NAMES[k] == name for k in got)


# ---------------------------------------------------------------------------------------------
# The concept probe


def test_bundled_photos_need_no_network(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("network access")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    import skimage

    skimage_dir = Path(skimage.__file__).parent
    for name in PHOTOS:
        assert photo_path(name).is_relative_to(skimage_dir)
    photos = load_photos(32)
    assert set(photos) == set(PHOTOS)
    assert all(p.ndim == 3 and p.shape[2] == 3 and min(p.shape[:2]) <= 33 for p in photos.values())


def test_probe_is_deterministic(tmp_path):
    a = make_concept_probe(tmp_path / "a", n_images=6, size=32, seed=3, show_progress=False)
    b = make_concept_probe(tmp_path / "b", n_images=6, size=32, seed=3, show_progress=False)
    c = make_concept_probe(tmp_path / "c", n_images=6, size=32, seed=4, show_progress=False)
    for name in ("index.csv", "label.csv", "category.csv", "c_part.csv", "images/probe/2_object.png", "images/probe/4.png"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    assert (a / "images/probe/0.png").read_bytes() != (c / "images/probe/0.png").read_bytes()
    # same arguments: reused; other arguments on a used folder: error
    stamp = (a / "index.csv").stat().st_mtime_ns
    assert make_concept_probe(a, n_images=6, size=32, seed=3, show_progress=False) == a
    assert (a / "index.csv").stat().st_mtime_ns == stamp
    with pytest.raises(DataError, match="delete it or choose another folder"):
        make_concept_probe(a, n_images=7, size=32, seed=3, show_progress=False)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert probe_is_made(a, n_images=6, size=32, seed=3)
    assert not probe_is_made(a, n_images=6, size=32, seed=4) and not probe_is_made(tmp_path / "none")


def test_the_default_probe_says_when_it_is_made(tmp_path, monkeypatch):
    """Building the built-in probe inside `dissect` takes seconds to a minute: a line says what and
    where before, and when it is ready; a cached probe is reused without a word."""
    from deepcluster.interpret import concepts
    from deepcluster.interpret.dissect import default_concepts

    monkeypatch.setenv("DEEPCLUSTER_CACHE", str(tmp_path))
    made: list[Path] = []
    monkeypatch.setattr(concepts, "make_concept_probe", lambda root, show_progress: made.append(root) or root)
    monkeypatch.setattr(concepts, "probe_is_made", lambda root: bool(made))
    lines: list[str] = []
    assert default_concepts(show_progress=False, log=lines.append) == tmp_path / "concept_probe"
    assert len(lines) == 2, lines
    assert lines[0].startswith("making the built-in concept probe (1000 images of 64 px, once")
    assert str(tmp_path / "concept_probe") in lines[0] and "about" in lines[0]
    assert lines[1].startswith("concept probe ready in ")
    lines.clear()
    default_concepts(show_progress=False, log=lines.append)
    assert lines == [] and len(made) == 2  # make_concept_probe checks and reuses it


def test_probe_masks_are_consistent(tmp_path):
    root = make_concept_probe(tmp_path / "probe", n_images=24, size=32, seed=0, show_progress=False)
    ds = BrodenDataset(root)
    assert list(ds.categories) == ["color", "object", "part", "material", "scene", "texture"]
    assert ds.image_categories == ("scene", "texture")
    names = {n: lab.name for n, lab in ds.labels.items()}
    objects = {n for n, lab in ds.labels.items() if lab.category == "object"}
    assert {names[n] for n in objects} == set(SHAPES)
    assert {names[n] for n in ds.categories["color"].labels} == set(COLOR_NAMES)
    assert {names[n] for n in ds.categories["texture"].labels} == set(TEXTURES)
    assert {names[n] for n in ds.categories["material"].labels} == {f"{t}-material" for t in TEXTURES}
    assert all(len(lab.categories) == 1 for lab in ds.labels.values())  # one category per concept
    freq: dict[int, int] = {}
    for s in ds:
        assert s.image.shape == (3, 32, 32) and s.mask_shape == (32, 32)
        (color,) = s.masks["color"]
        assert set(np.unique(color)) <= set(ds.categories["color"].labels) and color.all()
        (obj,) = s.masks["object"]
        assert obj.any() and set(np.unique(obj)) - {0} <= objects
        for n in set(np.unique(obj)) - {0}:
            freq[int(n)] = freq.get(int(n), 0) + 1
        quad, outline = s.masks["part"]
        # the quadrants of each shape partition its object mask; outlines lie inside it
        assert np.array_equal(quad != 0, obj != 0)
        for n in set(np.unique(obj)) - {0}:
            shape = names[n]
            assert {names[q] for q in np.unique(quad[obj == n])} <= {f"{shape}-{q}" for q in QUADRANTS}
            assert {names[o] for o in np.unique(outline[obj == n]) if o} <= {f"{shape}-outline"}
        assert not outline[obj == 0].any() and outline.any()
        # a texture image is textured wherever no solid shape covers it
        texture, scene = s.labels["texture"].tolist(), s.labels["scene"].tolist()
        assert len(texture) + len(scene) <= 1
        if texture:
            material = s.masks["material"][0]
            assert {names[m] for m in np.unique(material[obj == 0])} == {f"{names[texture[0]]}-material"}
        if s.masks["material"].shape[0]:
            assert set(np.unique(s.masks["material"])) - {0} <= set(ds.categories["material"].labels)
    for n in objects:
        assert ds.labels[n].frequency == freq.get(n, 0) == ds.categories["object"].stats[n][0]
    assert sum(ds.labels[n].coverage for n in ds.categories["color"].labels) == pytest.approx(len(ds), abs=1e-3)
    assert ds.categories["color"].frequency == ds.categories["object"].frequency == len(ds)
