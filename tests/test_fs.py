"""The one durable atomic write (stuisession._fs) and the modules that use it."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from stuisession import _fs
from stuisession.keys import Keyring


def _short_writes(monkeypatch: pytest.MonkeyPatch, limit: int = 3) -> list[int]:
    """Make os.write write at most *limit* bytes per call; return the sizes written."""
    real = os.write
    sizes: list[int] = []

    def short(fd: int, data: bytes | memoryview) -> int:
        n = real(fd, bytes(data[:limit]))
        sizes.append(n)
        return n

    monkeypatch.setattr(os, "write", short)
    return sizes


def test_atomic_write_completes_despite_short_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "f"
    data = bytes(range(256)) * 3
    sizes = _short_writes(monkeypatch)
    _fs.atomic_write(target, data)
    assert target.read_bytes() == data
    assert len(sizes) > 1  # the loop, not one lucky write


def test_keyring_save_completes_despite_short_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # keys.py once wrote its file with one unchecked os.write
    ring = Keyring.generate()
    _short_writes(monkeypatch, limit=5)
    ring.save(tmp_path / "keyring.json")
    monkeypatch.undo()
    assert Keyring.load(tmp_path / "keyring.json").to_json() == ring.to_json()


def test_symlink_at_target_is_replaced_not_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.write_bytes(b"precious")
    store = tmp_path / "store"
    store.mkdir()
    target = store / "f"
    target.symlink_to(outside)
    _fs.atomic_write(target, b"new")
    assert outside.read_bytes() == b"precious"
    assert not target.is_symlink()
    assert target.read_bytes() == b"new"


def test_symlink_at_temp_name_is_not_followed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    outside = tmp_path / "outside"
    outside.write_bytes(b"precious")
    monkeypatch.setattr(_fs.secrets, "token_hex", lambda n: "fixed")
    planted = tmp_path / f".f.fixed{_fs.TMP_SUFFIX}"
    planted.symlink_to(outside)
    with pytest.raises(FileExistsError):
        _fs.atomic_write(tmp_path / "f", b"new")
    assert outside.read_bytes() == b"precious"
    assert not (tmp_path / "f").exists()


def test_atomic_write_fsyncs_file_and_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = os.fsync
    kinds: list[str] = []

    def spy(fd: int) -> None:
        kinds.append("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    _fs.atomic_write(tmp_path / "f", b"x")
    assert kinds == ["file", "dir"]
    kinds.clear()
    _fs.atomic_write(tmp_path / "g", b"x", fsync=False)
    assert kinds == []


def test_create_only_never_replaces_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "f"
    _fs.atomic_write(target, b"first", create_only=True)
    with pytest.raises(FileExistsError):
        _fs.atomic_write(target, b"second", create_only=True)
    assert target.read_bytes() == b"first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]
    assert stat.S_IMODE(target.stat().st_mode) == 0o600


def test_failed_write_leaves_target_and_no_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "f"
    target.write_bytes(b"old")

    def full(fd: int, data: bytes | memoryview) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(OSError):
        _fs.atomic_write(target, b"new")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]


def test_read_file_and_open_dir_refuse_symlinks(tmp_path: Path) -> None:
    (tmp_path / "real").write_bytes(b"x")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    (tmp_path / "dirlink").symlink_to(tmp_path)
    with pytest.raises(OSError):
        _fs.read_file(tmp_path / "link")
    with pytest.raises(OSError):
        _fs.open_dir(tmp_path / "dirlink")
    assert _fs.read_file(tmp_path / "missing") is None
    assert _fs.read_file(tmp_path / "real") == b"x"
