"""When the supervisor restarts a stage that died, and when it gives up: pure, so it is unit-tested."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


@dataclass
class RestartPolicy:
    """Exponential backoff between restarts; give up after ``max_failures`` exits within ``window_s``.

    A stage that ran longer than the window before dying starts again from the shortest delay: only a
    stage that keeps failing is given up on, not one that crashes once a day.
    """

    max_failures: int = 5
    window_s: float = 60.0
    base_delay_s: float = 0.5
    max_delay_s: float = 30.0
    failures: deque[float] = field(default_factory=deque)

    def on_exit(self, now: float) -> float | None:
        """Record an unexpected exit at ``now``; the delay before restarting, or None to give up."""
        self.failures.append(now)
        while self.failures and now - self.failures[0] > self.window_s:
            self.failures.popleft()
        if len(self.failures) >= self.max_failures:
            return None
        return min(self.base_delay_s * 2 ** (len(self.failures) - 1), self.max_delay_s)

    @property
    def recent(self) -> int:
        return len(self.failures)
