"""Process-wide runtime state: the CoreWorker of this process and the task context.

``core`` is set by ``raylite.init`` in a driver and by the worker main in a worker.
The task context is thread-local because threaded and async actors run several calls
at once.
"""

from __future__ import annotations

import threading

core = None  # the CoreWorker of this process, or None before init / after shutdown


class TaskContext(threading.local):
    task_id: bytes | None = None
    job_id: str | None = None
    actor_id: bytes | None = None
    resources: dict | None = None
    gpu_ids: tuple = ()
    placement_group: list | None = None  # [pg_id, bundle_index, capture_child_tasks]
    in_exec_thread: bool = False


task_context = TaskContext()
