import numpy as np

from deepcluster.core.files import append_jsonl, read_jsonl, save_npy, write_json, write_text


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

    from deepcluster.core.files import atomic_path

    target = tmp_path / "keep.txt"
    write_text(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert not list(tmp_path.glob(".*.tmp"))


def test_importing_io_leaves_the_umask_alone_and_files_follow_it(tmp_path):
    import importlib
    import os

    import deepcluster.core.files as dio

    old = os.umask(0o027)
    try:
        importlib.reload(dio)
        assert os.umask(0o027) == 0o027  # reloading the module did not change it
        dio.write_text(tmp_path / "a.txt", "x")
        dio.append_jsonl(tmp_path / "m.jsonl", {"a": 1})
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "m.jsonl").stat().st_mode & 0o777 == 0o640


def test_append_jsonl_appends_in_place(tmp_path):
    path = tmp_path / "m.jsonl"
    append_jsonl(path, {"cycle": 1})
    inode = path.stat().st_ino
    append_jsonl(path, {"cycle": 2})
    assert path.stat().st_ino == inode  # the same file, not a rewritten copy
    assert path.read_text() == '{"cycle": 1}\n{"cycle": 2}\n'


def test_csv_text_rows_of_mappings_or_sequences():
    from deepcluster.core.files import csv_text

    rows = [{"a": 1, "b": None, "extra": 5}, {"a": 0.5, "b": float("nan")}]
    assert csv_text(rows, ["a", "b"]) == "a,b\n1,\n0.5,nan\n"
    assert csv_text(rows, ["a", "b"], float_format=".3f") == "a,b\n1,\n0.500,\n"
    assert csv_text([("x,y", 2)], ["name", "n"]) == 'name,n\n"x,y",2\n'
