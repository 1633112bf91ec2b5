"""A small fixed pool of threads that runs the helper's slow work, fair between uids.

Jobs queue per uid and the threads take them round-robin over the uids that wait, and
no uid has more than half of the threads at once: one user's flood of slow requests
delays another user's request by at most the job already running, never by the flood.
"""

from __future__ import annotations

import sys
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable

Job = Callable[[], None]


class FairPool:
    """`size` threads; `submit(uid, job)` queues `job` behind that uid's earlier ones."""

    def __init__(self, size: int, name: str = "netd-worker") -> None:
        self.size = size
        self.per_uid = max(1, size // 2)
        self.cond = threading.Condition()
        self.queues: OrderedDict[int, deque[Job]] = OrderedDict()  # uids with waiting jobs, in turn order
        self.running: dict[int, int] = {}
        self.stopped = False
        self.threads = [threading.Thread(target=self._run, name=f"{name}-{i}", daemon=True) for i in range(size)]
        for t in self.threads:
            t.start()

    def submit(self, uid: int, job: Job) -> None:
        """Queue `job` for `uid` (dropped if the pool is stopped)."""
        with self.cond:
            if self.stopped:
                return
            self.queues.setdefault(uid, deque()).append(job)
            self.cond.notify()

    def pending(self) -> int:
        """Jobs queued and not yet started."""
        with self.cond:
            return sum(len(q) for q in self.queues.values())

    def _next(self) -> tuple[int, Job] | None:
        for uid in self.queues:
            if self.running.get(uid, 0) < self.per_uid:
                queue = self.queues.pop(uid)
                job = queue.popleft()
                if queue:
                    self.queues[uid] = queue  # to the back of the turn order
                self.running[uid] = self.running.get(uid, 0) + 1
                return uid, job
        return None

    def _run(self) -> None:
        while True:
            with self.cond:
                picked = self._next()
                while picked is None and not self.stopped:
                    self.cond.wait()
                    picked = self._next()
                if picked is None:
                    return
            uid, job = picked
            try:
                job()
            except BaseException as exc:  # noqa: BLE001 - a job's failure must not end its thread
                print(time.strftime("%H:%M:%S ") + f"job of uid {uid} failed: {exc!r}", file=sys.stderr, flush=True)
            finally:
                with self.cond:
                    self.running[uid] -= 1
                    if not self.running[uid]:
                        del self.running[uid]
                    self.cond.notify_all()

    def stop(self, timeout: float = 10.0) -> None:
        """Drop the queued jobs and wait (up to `timeout`) for the running ones."""
        with self.cond:
            self.stopped = True
            self.queues.clear()
            self.cond.notify_all()
        deadline = time.monotonic() + timeout
        for t in self.threads:
            t.join(max(0.0, deadline - time.monotonic()))
