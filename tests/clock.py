"""A clock for code that takes one (`clock: Callable[[], float]`): time moves only when a test
says so, so a test of a deadline neither waits it out nor depends on how loaded the machine is."""

from __future__ import annotations


class ManualClock:
    """Monotonic seconds, advanced by hand."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        assert seconds >= 0, "a monotonic clock does not go back"
        self.now += seconds
