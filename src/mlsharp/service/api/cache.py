"""``/v1/cache``: result cache figures and clearing."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool

from mlsharp.service.api.jobs import _ERRORS
from mlsharp.service.cache import ResultCache
from mlsharp.service.deps import Owner, State
from mlsharp.service.schemas import CacheCleared, CacheStatsPublic

router = APIRouter(prefix="/v1/cache", tags=["cache"])


def cache_stats(cache: ResultCache) -> CacheStatsPublic:
    """The public figures of the result cache."""
    stats = cache.stats()
    return CacheStatsPublic(
        enabled=stats.enabled,
        size=stats.entries,
        bytes=stats.bytes,
        max_bytes=stats.max_bytes,
        hits=stats.hits,
        misses=stats.misses,
        hit_rate=round(stats.hit_rate, 4),
    )


@router.get("", response_model=CacheStatsPublic, responses=_ERRORS)
def get_cache(state: State, _owner: Owner) -> CacheStatsPublic:
    """Entries, bytes on disk, hits, misses and hit rate of the result cache."""
    return cache_stats(state.cache)


@router.post("/clear", response_model=CacheCleared, responses=_ERRORS)
async def clear_cache(state: State, _owner: Owner) -> CacheCleared:
    """Remove every cache entry (finished jobs keep their own result files)."""
    freed = await run_in_threadpool(state.cache.clear)
    return CacheCleared(status="success", freed_bytes=freed)
