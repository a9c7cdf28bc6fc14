"""An iterator run ahead in a background thread, so the consumer (the training loop) never waits on its Python work."""
from __future__ import annotations

import queue
import threading
from typing import Generic, Iterator, TypeVar

T = TypeVar("T")
_DONE = object()


class Background(Generic[T]):
    """Pulls `source` in a daemon thread into a queue of `size` items; errors surface at the consumer's next().

    `close()` stops the thread after the item in hand and closes `source`; it is idempotent and happens at exhaustion.
    """

    def __init__(self, source: Iterator[T], size: int):
        if size < 1:
            raise ValueError(f"prefetch size must be >= 1, got {size}")
        self._queue: queue.Queue = queue.Queue(maxsize=size)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(source,), daemon=True, name="date-jax-prefetch")
        self._thread.start()

    def _put(self, item: object) -> bool:
        """Queue `item` unless closed first; True if queued."""
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, source: Iterator[T]) -> None:
        try:
            for item in source:
                if not self._put(item):
                    return
            self._put(_DONE)
        except BaseException as error:      # noqa: BLE001 - re-raised in the consumer's thread
            self._put(error)
        finally:
            close = getattr(source, "close", None)
            if close is not None:           # a generator's `finally` blocks run here, in the thread that ran it
                close()

    def __iter__(self) -> "Background[T]":
        return self

    def __next__(self) -> T:
        if self._stop.is_set():
            raise StopIteration
        item = self._queue.get()
        if item is _DONE:
            self.close()
            raise StopIteration
        if isinstance(item, BaseException):
            self.close()
            raise item
        return item

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop the producer thread, drop what it had queued and wait (up to `timeout_s`) for it to finish the item
        in hand, so no thread is left inside the source (e.g. a tf.data iterator) when the process exits."""
        self._stop.set()
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        if self._thread is not threading.current_thread():
            self._thread.join(timeout_s)
