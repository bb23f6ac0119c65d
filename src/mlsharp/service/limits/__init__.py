"""Rate limits: a token bucket per client, the policy once over a store of buckets.

ports.py    RateLimiter (what routes call) and BucketStore (the storage primitive)
bucket.py   TokenBucketLimiter: the token bucket policy
memory.py   MemoryBuckets: in-process (embedded)
redis.py    RedisBuckets: shared by every API instance (scale-out)
"""

from mlsharp.service.limits.bucket import TokenBucketLimiter
from mlsharp.service.limits.ports import Bucket, BucketStore, RateLimiter

__all__ = ["Bucket", "BucketStore", "RateLimiter", "TokenBucketLimiter"]
