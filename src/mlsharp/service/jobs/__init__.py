"""Jobs: records, the rules on them, where they are stored, and the one runner.

model.py        JobRecord, JobStatus, BatchRecord, Lease; encoding, checks, events
transitions.py  the fenced transitions every store applies atomically
ports.py        JobStore: the storage primitives
sqlite.py       SQLiteJobStore (embedded; also the embedded queue)
redis.py        RedisJobStore (scale-out; imported by the composition root only)
runner.py       JobRunner: the library path, outcomes, retries, drain (both modes)
"""

from mlsharp.service.jobs.model import (
    STAGES,
    BatchRecord,
    CorruptRecord,
    DuplicateJob,
    JobRecord,
    JobStatus,
    Lease,
    LeaseLost,
    new_id,
    stage_progress,
)
from mlsharp.service.jobs.ports import JobStore

__all__ = [
    "STAGES",
    "BatchRecord",
    "CorruptRecord",
    "DuplicateJob",
    "JobRecord",
    "JobStatus",
    "JobStore",
    "Lease",
    "LeaseLost",
    "new_id",
    "stage_progress",
]
