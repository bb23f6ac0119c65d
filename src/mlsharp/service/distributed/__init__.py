"""Scale-out mode: shared job state, queue, cache and rate limits in Redis; files in S3.

Selected by ``Settings.queue`` (``--queue redis://HOST:PORT/DB`` or ``MLSHARP_QUEUE``).
Every class here implements an interface the embedded default also implements
(``JobStore``, ``Storage``, the result cache, ``RateLimiter``, the webhook service), so the
routes and the job runner do not know which mode they run in. Nothing here is imported in
the embedded mode: ``redis``, ``dramatiq`` and ``boto3`` are the optional ``[distributed]``
extra. See docs/deployment.md.

    redis_conn.py   Redis clients, errors turned into 503s, waiting with backoff
    job_store.py    RedisJobStore: records, indexes, fenced attempts (lease tokens)
    queue.py        JobQueue: the Dramatiq broker and the job actor
    runner.py       QueueRunner: consumes the queue in a worker (or `serve --workers N`)
    reconcile.py    Reconciler: re-sends lost queue messages, fails dead-lettered jobs
    webhooks.py     RedisWebhookService: shared registry, exactly-one dispatch
    cache.py        RedisResultCache: Redis index, files in the shared storage
    limiter.py      RedisTokenBucket: one bucket per client across API instances
    s3.py           S3Storage: job files in S3-compatible object storage
    state.py        build_distributed(): the ServiceState of this mode
"""
