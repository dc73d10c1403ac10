"""One shared model, many request threads: run whatever is waiting as one batch, one batch at a time.

A server thread per request decodes its own input, then hands it to :class:`Batcher`, which runs
the work of every request waiting at that moment in one call: on a CPU a batch of 8 images costs
far less than 8 batches of one. Each request still gets its own result or its own exception, so
one bad request never fails the others (Gradio's ``batch=True`` can only fail a whole batch).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Generic, TypeVar

In = TypeVar("In")
Out = TypeVar("Out")


class _Job(Generic[In, Out]):
    def __init__(self, item: In) -> None:
        self.item = item
        self.done = False
        self.result: Out | None = None
        self.error: BaseException | None = None


class Batcher(Generic[In, Out]):
    """Calls ``run(items) -> results`` (one result per item, in order) on up to ``max_batch_size``
    waiting items at a time, never twice at once.

    Whoever holds the lock runs a batch of the waiting items (its own among them unless an earlier
    batch took it); the others wait for the lock and find their result ready. Nothing waits for a
    batch to fill: a lone request runs alone, at once.
    """

    def __init__(self, run: Callable[[list[In]], Sequence[Out]], max_batch_size: int) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size={max_batch_size}; use 1 or more")
        self.run = run
        self.max_batch_size = max_batch_size
        self._lock = threading.Lock()
        """Held while the shared resource is in use: by a batch or by :meth:`exclusive`."""
        self._pending: list[_Job[In, Out]] = []
        self._pending_lock = threading.Lock()

    def __call__(self, item: In) -> Out:
        """``item``'s result, computed in a batch with the items waiting alongside it."""
        job: _Job[In, Out] = _Job(item)
        with self._pending_lock:
            self._pending.append(job)
        while not job.done:
            with self._lock:
                if not job.done:
                    self._run_waiting()
        if job.error is not None:
            raise job.error
        return job.result  # type: ignore[return-value]

    def _run_waiting(self) -> None:
        with self._pending_lock:
            batch, self._pending = self._pending[: self.max_batch_size], self._pending[self.max_batch_size :]
        try:
            results = self.run([job.item for job in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"run returned {len(results)} results for {len(batch)} items")
            for job, result in zip(batch, results):
                job.result = result
        except Exception as err:  # every request of the batch sees the failure, none hangs
            for job in batch:
                job.error = err
        for job in batch:
            job.done = True

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """Use the shared resource for something else; no batch runs meanwhile."""
        with self._lock:
            yield
