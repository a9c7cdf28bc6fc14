import time

import pytest

from date_jax.data import prefetch


def test_yields_the_source_in_order_then_stops():
    assert list(prefetch.Background(iter(range(50)), 3)) == list(range(50))


def test_error_in_the_source_reaches_the_consumer_after_earlier_items():
    def source():
        yield 1
        yield 2
        raise OSError("disk gone")

    stream = prefetch.Background(source(), 2)
    assert next(stream) == 1 and next(stream) == 2
    with pytest.raises(OSError, match="disk gone"):
        next(stream)


def test_runs_ahead_by_at_most_size_items_and_close_stops_the_thread():
    produced = []

    def source():
        for i in range(1000):
            produced.append(i)
            yield i

    stream = prefetch.Background(source(), 4)
    assert next(stream) == 0
    time.sleep(0.3)
    assert len(produced) <= 1 + 4 + 1      # consumed + queued + one in hand
    stream.close()
    time.sleep(0.3)
    assert not stream._thread.is_alive()
    with pytest.raises(StopIteration):
        next(stream)


def test_rejects_an_empty_queue():
    with pytest.raises(ValueError, match="prefetch size"):
        prefetch.Background(iter([]), 0)
