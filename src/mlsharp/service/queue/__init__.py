"""How jobs reach the runner: the port and its two adapters.

ports.py      JobQueue: start / stop / send
local.py      LocalQueue: worker threads claiming from the SQLite store (embedded)
dramatiq.py   DramatiqQueue: the Redis task queue, its heartbeat and deliveries
reconcile.py  Reconciler: no job stays without a queue message (scale-out)
"""
