"""The auth and rate-limit building blocks (the limiter over both bucket stores)."""

from __future__ import annotations

import pytest

from mlsharp.errors import Forbidden, RateLimited, Unauthorized
from mlsharp.service.auth import ApiKeys
from mlsharp.service.limits import TokenBucketLimiter
from mlsharp.service.limits.memory import MemoryBuckets


def test_api_keys():
    keys = ApiKeys(["k1", "k2"])
    assert keys.required
    with pytest.raises(Unauthorized):
        keys.identify({})
    with pytest.raises(Forbidden):
        keys.identify({"authorization": "Bearer nope"})
    one = keys.identify({"authorization": "Bearer k1"})
    two = keys.identify({"x-api-key": "k2"})
    assert one and two and one != two
    assert "k1" not in repr(keys.__dict__)  # only digests are kept
    assert ApiKeys([]).identify({}) is None


def test_token_bucket_refills():
    now = [0.0]
    limiter = TokenBucketLimiter(MemoryBuckets(clock=lambda: now[0]), 3, 60.0)
    for _ in range(3):
        limiter.check("a")
    with pytest.raises(RateLimited) as info:
        limiter.check("a")
    assert info.value.retry_after == 20.0  # one token every 20 s
    limiter.check("b")  # another client has its own bucket
    now[0] = 20.0
    limiter.check("a")
    with pytest.raises(RateLimited):
        limiter.check("a")


@pytest.fixture(params=["memory", "redis"])
def buckets(request):
    """A bucket store of each backend."""
    if request.param == "memory":
        return MemoryBuckets()
    from mlsharp.service.limits.redis import RedisBuckets

    return RedisBuckets(request.getfixturevalue("redis_server").client(), "t")


def test_token_bucket_limits_each_client(buckets):
    limiter = TokenBucketLimiter(buckets, 3, 60.0)
    for _ in range(3):
        limiter.check("a")
    with pytest.raises(RateLimited) as info:
        limiter.check("a")
    assert info.value.retry_after == 20.0  # the next token comes in 20 s
    limiter.check("b")  # another client has its own bucket
    with pytest.raises(RateLimited):
        limiter.check("a")  # a refused request took nothing, still none left


def test_a_limiter_can_be_asked_without_taking(buckets):
    """``check(client, take=False)`` refuses an empty bucket but never empties one: the
    wrong-key throttle asks before each attempt and takes only on failures."""
    limiter = TokenBucketLimiter(buckets, 2, 60.0)
    for _ in range(10):
        limiter.check("a", take=False)  # asking costs nothing
    limiter.check("a")
    limiter.check("a")
    with pytest.raises(RateLimited):
        limiter.check("a", take=False)
    with pytest.raises(RateLimited):
        limiter.check("a")
    limiter.check("b", take=False)  # other clients have their own bucket
