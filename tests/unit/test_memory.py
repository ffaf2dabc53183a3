"""MemoryBudget: which kept results to drop, by bytes and by count."""

from __future__ import annotations

import threading

from core.memory import MemoryBudget


def test_the_least_recently_used_go_first_once_the_bytes_pass_the_limit() -> None:
    budget = MemoryBudget(limit_bytes=100)
    assert budget.use("a", 40) == []
    assert budget.use("b", 40) == []
    assert budget.use("a", 40) == []  # a used again: b is now the oldest
    assert budget.use("c", 30) == ["b"]  # 110 > 100
    assert budget.keys == ["a", "c"] and budget.held_bytes == 70


def test_the_newest_is_kept_even_alone_over_the_limit() -> None:
    budget = MemoryBudget(limit_bytes=100)
    budget.use("a", 10)
    budget.use("b", 10)
    assert budget.use("huge", 500) == ["a", "b"]
    assert budget.keys == ["huge"]
    assert budget.use("small", 1) == ["huge"]


def test_a_count_bounds_small_entries_too() -> None:
    budget = MemoryBudget(limit_bytes=1e12, max_entries=2)
    budget.use("a", 1)
    budget.use("b", 1)
    assert budget.use("c", 1) == ["a"]
    budget.forget("b")
    assert budget.keys == ["c"]


def test_a_size_that_changes_is_counted_once() -> None:
    budget = MemoryBudget(limit_bytes=100)
    budget.use("a", 60)
    assert budget.use("a", 90) == [] and budget.held_bytes == 90


def test_threads_sharing_it_keep_the_books_straight() -> None:
    budget = MemoryBudget(limit_bytes=1000, max_entries=1000)
    dropped: list[str] = []

    def worker(start: int) -> None:
        for i in range(start, start + 200):
            dropped.extend(budget.use(f"k{i}", 10))

    threads = [threading.Thread(target=worker, args=(n * 200,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert budget.held_bytes == 1000 and len(budget.keys) == 100
    assert len(dropped) == 700 and not set(dropped) & set(budget.keys)
