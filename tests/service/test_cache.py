"""The result cache: keys, hits and misses, LRU eviction, persistence, crashes.

The cache's behaviour is tested over both indexes (``cache`` fixture: SQLite with local
files, Redis with a shared folder); what only the embedded cache does (its layout on
disk, persistence across restarts, the sweep of crash leftovers) over SQLite.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
from pathlib import Path

import numpy as np
import pytest

from mlsharp._atomic import link_or_copy
from mlsharp.service.cache import CacheStats, ResultCache, cache_key
from mlsharp.service.cache.sqlite import local_cache

PIXELS = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)


def key(i: int) -> str:
    return f"{i:064x}"


def make_file(path: Path, size: int, fill: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes((fill * size)[:size])
    return path


@pytest.fixture()
def src(tmp_path: Path):
    """Write a source file of ``size`` bytes under tmp_path/src and return its path."""
    counter = iter(range(10_000))

    def make(size: int, fill: bytes = b"x", name: str = "scene.ply") -> Path:
        return make_file(tmp_path / "src" / str(next(counter)) / name, size, fill)

    return make


def open_cache(root: Path, max_bytes: int = 10_000, **kwargs) -> ResultCache:
    """The embedded cache under ``root``."""
    return local_cache(root, max_bytes=max_bytes, **kwargs)


@pytest.fixture(params=["sqlite", "redis"])
def make_cache(request, tmp_path: Path):
    """``make(max_bytes=10_000, name="cache")``: caches of one backend, closed at the end."""
    made: list[ResultCache] = []

    def make(max_bytes: int = 10_000, name: str = "cache") -> ResultCache:
        if request.param == "sqlite":
            made.append(open_cache(tmp_path / name, max_bytes=max_bytes))
        else:
            from mlsharp.service.cache.redis import RedisCacheIndex
            from mlsharp.service.files.local import LocalBlobs

            redis = request.getfixturevalue("redis_server").client()
            index = RedisCacheIndex(redis, f"t-{name}")
            made.append(ResultCache(index, LocalBlobs(tmp_path / name), max_bytes=max_bytes))
        return made[-1]

    yield make
    for one in made:
        one.close()


def entry_dir(cache: ResultCache, k: str) -> Path:
    """Where the cache keeps entry ``k`` (the documented layout)."""
    return cache.blobs.root / k[:2] / k  # type: ignore[union-attr]


def cached_keys(cache: ResultCache, keys: list[str]) -> list[str]:
    """Which of ``keys`` are present (looked up without touching the LRU order or counters)."""
    return [k for k in keys if entry_dir(cache, k).is_dir()]


# -- cache_key ----------------------------------------------------------------------------


def test_key_is_equal_for_equal_inputs() -> None:
    a = cache_key(PIXELS, focal_px=500, model_id="sharp", options={"a": 1, "b": [1, 2]})
    b = cache_key(PIXELS.copy(), focal_px=500.0, model_id="sharp", options={"b": [1, 2], "a": 1})
    assert a == b
    assert len(a) == 64 and set(a) <= set("0123456789abcdef")
    # A non-contiguous view hashes like its contiguous copy; no options is like {}.
    view = np.asfortranarray(PIXELS)
    assert cache_key(view, focal_px=1, model_id="m") == cache_key(PIXELS, focal_px=1, model_id="m")
    assert cache_key(PIXELS, focal_px=1, model_id="m") == cache_key(
        PIXELS, focal_px=1, model_id="m", options={}
    )


def _one_pixel_changed() -> np.ndarray:
    pixels = PIXELS.copy()
    pixels[3, 5, 2] ^= 1
    return pixels


@pytest.mark.parametrize(
    "change",
    [
        {"pixels": _one_pixel_changed()},
        {"pixels": PIXELS.view(np.int8)},
        {"pixels": PIXELS.reshape(6, 4, 3)},
        {"focal_px": 500.5},
        {"model_id": "sharp-v2"},
        {"options": {"a": 2}},
        {"options": {"a": 1, "c": None}},
    ],
    ids=["pixel", "dtype", "shape", "focal", "model", "option-value", "option-added"],
)
def test_key_differs_when_any_input_changes(change: dict) -> None:
    base = {"pixels": PIXELS, "focal_px": 500.0, "model_id": "sharp", "options": {"a": 1}}
    changed = {**base, **change}
    assert cache_key(changed.pop("pixels"), **changed) != cache_key(base.pop("pixels"), **base)


# -- link_or_copy -------------------------------------------------------------------------


def test_link_or_copy_hard_links_and_replaces_atomically(tmp_path: Path) -> None:
    first = make_file(tmp_path / "a", 10, b"1")
    second = make_file(tmp_path / "b", 10, b"2")
    dst = tmp_path / "deep" / "er" / "out.ply"
    link_or_copy(first, dst)
    assert os.path.samefile(first, dst)
    held = tmp_path / "held"
    os.link(dst, held)  # someone holds the old file
    link_or_copy(second, dst)  # replaced by a new name, not rewritten
    assert dst.read_bytes() == b"2" * 10
    assert held.read_bytes() == first.read_bytes() == b"1" * 10
    link_or_copy(dst, dst)  # already the same file: nothing to do
    assert sorted(p.name for p in dst.parent.iterdir()) == ["out.ply"]


def test_link_or_copy_copies_across_filesystems(tmp_path: Path) -> None:
    if not os.path.isdir("/dev/shm") or os.stat("/dev/shm").st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("no second filesystem to copy across")
    source = make_file(tmp_path / "a", 1000, b"q")
    with tempfile.TemporaryDirectory(dir="/dev/shm") as other:
        dst = Path(other) / "sub" / "copy.ply"
        link_or_copy(source, dst)
        assert dst.read_bytes() == source.read_bytes()
        assert not os.path.samefile(source, dst)
        assert [p.name for p in dst.parent.iterdir()] == ["copy.ply"]


# -- get / put / stats --------------------------------------------------------------------


def test_miss_then_put_then_hit(make_cache, tmp_path: Path, src) -> None:
    cache = make_cache()
    assert cache.get(key(1), ["ply"]) is None
    ply = src(100, b"p")
    cache.put(key(1), {"ply": ply})
    hit = cache.get(key(1), ["ply"])
    assert hit is not None and set(hit) == {"ply"}
    assert hit["ply"].is_file() and hit["ply"].read_bytes() == ply.read_bytes()
    assert hit["ply"].is_relative_to(tmp_path)
    assert ply.read_bytes() == b"p" * 100  # the source is left in place


def test_partial_format_set_is_a_miss(make_cache, tmp_path: Path, src) -> None:
    cache = make_cache()
    cache.put(key(1), {"ply": src(10)})
    assert cache.get(key(1), ["ply", "spz"]) is None
    assert cache.get(key(1), ["spz"]) is None
    assert cache.stats().misses == 2


def test_put_merges_formats_and_replaces_same_format(make_cache, tmp_path: Path, src) -> None:
    cache = make_cache()
    cache.put(key(1), {"ply": src(10, b"1")})
    cache.put(key(1), {"spz": src(20, b"2")})
    both = cache.get(key(1), ["ply", "spz"])
    assert both is not None
    assert both["ply"].read_bytes() == b"1" * 10 and both["spz"].read_bytes() == b"2" * 20
    cache.put(key(1), {"ply": src(30, b"3")})
    assert cache.get(key(1), ["ply"])["ply"].read_bytes() == b"3" * 30
    stats = cache.stats()
    assert (stats.entries, stats.bytes) == (1, 50)


def test_stats_counts_and_hit_rate(make_cache, tmp_path: Path, src) -> None:
    cache = make_cache(max_bytes=1234)
    assert cache.stats() == CacheStats(True, 0, 0, 1234, 0, 0, 0.0)
    cache.put(key(1), {"ply": src(100)})
    cache.put(key(2), {"ply": src(50)})
    cache.get(key(1), ["ply"])
    cache.get(key(2), ["ply"])
    cache.get(key(1), ["ply"])
    cache.get(key(3), ["ply"])
    assert cache.stats() == CacheStats(True, 2, 150, 1234, 3, 1, 0.75)


def test_invalid_key_or_format_is_rejected(make_cache, tmp_path: Path, src) -> None:
    cache = make_cache()
    with pytest.raises(ValueError, match="key"):
        cache.get("../etc", ["ply"])
    with pytest.raises(ValueError, match="format"):
        cache.put(key(1), {"../ply": src(1)})


# -- eviction -----------------------------------------------------------------------------


def test_lru_eviction_by_bytes(make_cache, tmp_path: Path, src) -> None:
    cache = make_cache(max_bytes=300)
    for i in (1, 2, 3):
        cache.put(key(i), {"ply": src(100)})
    assert cache.get(key(1), ["ply"]) is not None  # 2 is now the least recently used
    cache.put(key(4), {"ply": src(100)})
    assert cached_keys(cache, [key(i) for i in (1, 2, 3, 4)]) == [key(1), key(3), key(4)]
    assert cache.get(key(2), ["ply"]) is None
    stats = cache.stats()
    assert stats.entries == 3 and stats.bytes == 300 <= stats.max_bytes
    cache.put(key(5), {"ply": src(250)})  # evicts 1, 3 and 4 (oldest first) to fit
    assert cached_keys(cache, [key(i) for i in (1, 3, 4, 5)]) == [key(5)]
    assert cache.stats().bytes == 250


def test_entry_bigger_than_max_bytes_is_not_kept(make_cache, tmp_path: Path, src) -> None:
    cache = make_cache(max_bytes=100)
    cache.put(key(1), {"ply": src(60)})
    cache.put(key(2), {"ply": src(101)})
    assert cached_keys(cache, [key(1), key(2)]) == [key(1)]  # nothing evicted for it
    cache.put(key(1), {"spz": src(50)})  # merged entry too big: dropped whole
    assert cached_keys(cache, [key(1)]) == []
    assert cache.stats().bytes == 0

    zero = make_cache(max_bytes=0, name="zero")
    zero.put(key(1), {"ply": src(0)})
    assert zero.get(key(1), ["ply"]) is None
    assert zero.stats().entries == 0


def test_clear_frees_everything_and_resets_counters(make_cache, tmp_path: Path, src) -> None:
    cache = make_cache()
    cache.put(key(1), {"ply": src(100)})
    cache.put(key(2), {"ply": src(23), "spz": src(7)})
    cache.get(key(1), ["ply"])
    cache.get(key(9), ["ply"])
    assert cache.clear() == 130
    assert cache.stats() == CacheStats(True, 0, 0, 10_000, 0, 0, 0.0)
    assert list(cache.blobs.root.iterdir()) == []  # type: ignore[union-attr]
    cache.put(key(1), {"ply": src(5)})  # still usable
    assert cache.get(key(1), ["ply"]) is not None


def test_callers_hard_link_survives_eviction_and_replacement(
    make_cache, tmp_path: Path, src
) -> None:
    cache = make_cache(max_bytes=100)
    produced = src(100, b"a")
    cache.put(key(1), {"ply": produced})
    job_file = tmp_path / "job" / "out" / "scene.ply"
    link_or_copy(cache.get(key(1), ["ply"])["ply"], job_file)
    cache.put(key(1), {"ply": src(100, b"b")})  # same format replaced
    assert job_file.read_bytes() == b"a" * 100
    cache.put(key(2), {"ply": src(100, b"c")})  # key 1 evicted
    assert cached_keys(cache, [key(1), key(2)]) == [key(2)]
    assert job_file.read_bytes() == produced.read_bytes() == b"a" * 100


# -- persistence and crash recovery -------------------------------------------------------


def test_restart_keeps_entries_bytes_counters_and_lru_order(tmp_path: Path, src) -> None:
    root = tmp_path / "cache"
    with open_cache(root, max_bytes=300) as cache:
        for i in (1, 2, 3):
            cache.put(key(i), {"ply": src(100)})
        cache.get(key(1), ["ply"])
        cache.get(key(7), ["ply"])
        before = cache.stats()
    with open_cache(root, max_bytes=300) as cache:
        assert cache.stats() == before == CacheStats(True, 3, 300, 300, 1, 1, 0.5)
        cache.put(key(4), {"ply": src(100)})  # 2 is still the least recently used
        assert cached_keys(cache, [key(i) for i in (1, 2, 3, 4)]) == [key(1), key(3), key(4)]
    with open_cache(root, max_bytes=150) as cache:  # a smaller limit applies on open
        assert cached_keys(cache, [key(i) for i in (1, 3, 4)]) == [key(4)]
        assert cache.stats().bytes == 100


def test_vanished_files_miss_and_drop_the_row(make_cache, tmp_path: Path, src) -> None:
    cache = make_cache()
    cache.put(key(1), {"ply": src(10), "spz": src(20)})
    path = cache.get(key(1), ["spz"])["spz"]
    path.unlink()
    assert cache.get(key(1), ["ply", "spz"]) is None
    assert cache.get(key(1), ["ply"]) is None  # the whole entry went
    stats = cache.stats()
    assert (stats.entries, stats.bytes, stats.hits, stats.misses) == (0, 0, 1, 2)
    assert not path.parent.exists()


def test_open_sweeps_crash_leftovers(tmp_path: Path, src) -> None:
    root = tmp_path / "cache"
    with open_cache(root) as cache:
        cache.put(key(1), {"ply": src(10)})
        cache.put(key(2), {"ply": src(20)})
        kept = entry_dir(cache, key(1))
        vanished = entry_dir(cache, key(2))
    # What a crash can leave: an unindexed entry, a stray file inside an indexed entry, a
    # half-staged file, and an indexed entry whose folder is gone.
    orphan = make_file(root / "entries" / "ab" / ("ab" * 32) / "result.ply", 50)
    stray = make_file(kept / "result.ply.tmp-0123456789abcdef", 5)
    staged = make_file(root / "staging" / "tmpxyz" / "result.ply", 5)
    for child in vanished.iterdir():
        child.unlink()
    vanished.rmdir()
    with open_cache(root) as cache:
        assert not orphan.parent.exists() and not stray.exists() and not staged.exists()
        assert sorted(p.name for p in kept.iterdir()) == ["result.ply"]
        stats = cache.stats()
        assert (stats.entries, stats.bytes) == (1, 10)
        assert cache.get(key(1), ["ply"]) is not None


def test_disabled_cache_is_a_no_op(tmp_path: Path, src) -> None:
    root = tmp_path / "cache"
    cache = open_cache(root, enabled=False)
    cache.put(key(1), {"ply": src(10)})
    assert cache.get(key(1), ["ply"]) is None
    assert cache.stats() == CacheStats(False, 0, 0, 10_000, 0, 0, 0.0)
    assert cache.clear() == 0
    cache.close()
    assert not root.exists()


# -- threads ------------------------------------------------------------------------------


def test_concurrent_get_and_put(tmp_path: Path) -> None:
    cache = open_cache(tmp_path / "cache", max_bytes=2_000)
    errors: list[BaseException] = []

    def work(thread: int) -> None:
        try:
            for i in range(12):
                k = key(thread * 100 + i)
                size = 40 + 10 * i
                path = make_file(tmp_path / "src" / f"{thread}-{i}.ply", size)
                cache.put(k, {"ply": path})
                hit = cache.get(k, ["ply"])
                with contextlib.suppress(FileNotFoundError):  # may be evicted meanwhile
                    assert hit is None or hit["ply"].stat().st_size == size
                cache.get(key(((thread + 1) % 4) * 100 + i), ["ply"])
                cache.stats()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    stats = cache.stats()
    on_disk = list((tmp_path / "cache" / "entries").glob("*/*/*"))
    assert stats.bytes == sum(p.stat().st_size for p in on_disk) <= stats.max_bytes
    assert stats.entries == len(on_disk)
    assert stats.hits + stats.misses == 4 * 12 * 2
    assert list((tmp_path / "cache" / "staging").iterdir()) == []
    cache.close()
