"""Failed-login throttle: after N failures in a window, further tries get 429.

Counted per (address, email) so that one attacker cannot lock a user out from
everywhere, per address alone so that one address cannot walk many emails, and per
email alone (four times the first limit) so that many addresses cannot take turns
guessing one account's password.
"""

from __future__ import annotations

import time
from collections import deque

MAX_KEYS = 10_000  # past this many, forget the ones whose failures have all expired


class LoginThrottle:
    def __init__(self, max_failures: int, window: float) -> None:
        self.max_failures = max_failures
        self.window = window
        self._failures: dict[tuple[str, str], deque[float]] = {}

    def _keys(self, address: str, email: str) -> list[tuple[tuple[str, str], int]]:
        email = email.strip().lower()
        return [((address, email), self.max_failures), ((address, ""), self.max_failures * 4),
                (("", email), self.max_failures * 4)]

    def retry_after(self, address: str, email: str) -> int:
        """Seconds until another try is allowed (0: allowed now)."""
        now = time.monotonic()
        wait = 0.0
        for key, limit in self._keys(address, email):
            times = self._failures.get(key)
            if not times:
                continue
            while times and times[0] <= now - self.window:
                times.popleft()
            if not times:
                del self._failures[key]
            elif len(times) >= limit:
                wait = max(wait, times[0] + self.window - now)
        return int(wait) + 1 if wait else 0

    def failed(self, address: str, email: str) -> None:
        now = time.monotonic()
        if len(self._failures) > MAX_KEYS:
            self._failures = {k: t for k, t in self._failures.items() if t and t[-1] > now - self.window}
        for key, _ in self._keys(address, email):
            self._failures.setdefault(key, deque()).append(now)

    def succeeded(self, address: str, email: str) -> None:
        self._failures.pop((address, email.strip().lower()), None)
