import numpy as np

from deepcluster.io import append_jsonl, read_jsonl, save_npy, write_json, write_text


def test_atomic_writes_leave_no_temp_files(tmp_path):
    write_text(tmp_path / "a.txt", "hello")
    write_json(tmp_path / "sub" / "b.json", {"x": 1})
    save_npy(tmp_path / "c.npy", np.arange(3))
    append_jsonl(tmp_path / "m.jsonl", {"cycle": 1})
    append_jsonl(tmp_path / "m.jsonl", {"cycle": 2})
    assert (tmp_path / "a.txt").read_text() == "hello"
    assert np.load(tmp_path / "c.npy").tolist() == [0, 1, 2]
    assert [r["cycle"] for r in read_jsonl(tmp_path / "m.jsonl")] == [1, 2]
    assert not list(tmp_path.rglob("*.tmp"))


def test_failed_write_keeps_old_content(tmp_path):
    import pytest

    from deepcluster.io import atomic_path

    target = tmp_path / "keep.txt"
    write_text(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert not list(tmp_path.glob(".*.tmp"))
