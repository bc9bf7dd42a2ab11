"""The batch prefetcher: the next batches are made in a background thread, in order, a bounded
number ahead; errors surface in the training thread; a stop ends the thread."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from engine.batching import collate, make_batches
from engine.encode import EncodedSplit
from engine.prefetch import Prefetcher


def split_of(pairs: int, seed: int = 0) -> EncodedSplit:
    """Random id rows of 3 to 19 tokens, as the encode stage stores them."""
    rng = np.random.default_rng(seed)

    def flat(lengths):
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        return rng.integers(4, 100, int(offsets[-1])).astype(np.int32), offsets

    return EncodedSplit(*flat(rng.integers(3, 20, pairs)), *flat(rng.integers(3, 20, pairs)))


def test_batches_come_in_the_plain_loops_order_made_in_another_thread():
    split = split_of(300)
    batches = make_batches(split.src_lengths, split.tgt_lengths, 120, seed=1)
    order = np.random.default_rng(2).permutation(len(batches))
    threads = set()

    def make(position):
        threads.add(threading.current_thread().name)
        return collate(split, batches[order[position]])

    positions = range(3, len(order))  # a resumed epoch starts mid-way
    with Prefetcher(make, positions) as prefetched:
        got = list(prefetched)
    expected = [collate(split, batches[order[p]]) for p in positions]
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        assert a.tokens == b.tokens and a.src.equal(b.src) and a.tgt_out.equal(b.tgt_out)
    assert threads == {"batch-prefetch"}


def test_it_works_at_most_depth_batches_ahead():
    made = []

    def make(position):
        made.append(position)
        return position

    with Prefetcher(make, range(50), depth=2) as prefetched:
        for taken, position in enumerate(prefetched, start=1):
            time.sleep(0.005)  # a slow training step: the producer fills the queue meanwhile
            # queued (2) plus the one being handed over
            assert len(made) <= taken + 3
            assert position == taken - 1


def test_an_error_while_collating_is_raised_in_the_training_thread_at_its_batch():
    def make(position):
        if position == 4:
            raise ValueError("row 4 is broken")
        return position

    got = []
    with pytest.raises(ValueError, match="row 4 is broken"):
        with Prefetcher(make, range(10)) as prefetched:
            for position in prefetched:
                got.append(position)
    assert got == [0, 1, 2, 3]


def test_a_stop_mid_epoch_ends_the_thread_and_makes_nothing_more():
    made = []
    prefetcher = Prefetcher(lambda p: made.append(p) or p, range(1000), depth=2)
    assert next(prefetcher) == 0
    prefetcher.close()  # what leaving the loop's with block does (a stop, an exception)
    assert not prefetcher.running
    count = len(made)
    time.sleep(0.05)
    assert len(made) == count < 10
