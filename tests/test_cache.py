"""Where builds are cached and the digests their keys are made of."""

import hashlib

from ddalign.cache import cache_root, file_digest, package_data_digest
from ddalign.pair.build import answers_cache, parent_digest


def test_the_cache_root_follows_ddalign_cache_then_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("DDALIGN_CACHE", str(tmp_path / "mine"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "mine"
    monkeypatch.delenv("DDALIGN_CACHE")
    assert cache_root() == tmp_path / "xdg" / "ddalign"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_root() == tmp_path / "home" / ".cache" / "ddalign"


def test_digests_are_the_files_sha256(monkeypatch, tmp_path):
    parent = tmp_path / "parent"
    parent.mkdir()
    data = bytes(range(256)) * 1000
    (parent / "model.safetensors").write_bytes(data)
    assert file_digest(parent / "model.safetensors") == hashlib.sha256(data).hexdigest()
    assert parent_digest(parent) == hashlib.sha256(data).hexdigest()
    monkeypatch.setenv("DDALIGN_CACHE", str(tmp_path / "cache"))
    # the parent's answers are kept apart from any one build, under the parent's digest
    assert answers_cache(parent_digest(parent)) == tmp_path / "cache" / "answers" / f"{parent_digest(parent)[:16]}.json"
    assert len(package_data_digest()) == 64
