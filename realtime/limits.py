"""Limits per user and per address, across all of a user's sockets (docs/security.md, "Limits").

One socket may send `Settings.rate_limit` location messages a second (the socket handler
counts that); these count what a user does through all their sockets together, so that
opening more sockets buys no more: messages a second, and sockets open at once (also per
address, for tokens shared out). They hold for one process; their numbers are the
Settings fields `user_messages_per_second`, `user_sockets` and `address_sockets`.
"""

from __future__ import annotations

import time
from collections import deque
from ipaddress import ip_address


class Limits:
    def __init__(self, user_messages: int, user_sockets: int, address_sockets: int) -> None:
        self.user_messages = user_messages
        self.user_sockets = user_sockets
        self.address_sockets = address_sockets
        self._sent: dict[int, deque[float]] = {}
        self._open_by_user: dict[int, int] = {}
        self._open_by_address: dict[str, int] = {}

    def open(self, user_id: int, address: str) -> str | None:
        """Count a socket in; the reason it may not open, or None (then `close` it later)."""
        if self._open_by_user.get(user_id, 0) >= self.user_sockets:
            return f"too many open sockets: at most {self.user_sockets} for one user"
        if self._open_by_address.get(address, 0) >= self.address_sockets and not _loopback(address):
            return f"too many open sockets: at most {self.address_sockets} from one address"
        self._open_by_user[user_id] = self._open_by_user.get(user_id, 0) + 1
        self._open_by_address[address] = self._open_by_address.get(address, 0) + 1
        return None

    def close(self, user_id: int, address: str) -> None:
        for counts, key in ((self._open_by_user, user_id), (self._open_by_address, address)):
            left = counts.get(key, 0) - 1
            if left > 0:
                counts[key] = left
            else:
                counts.pop(key, None)
        if user_id not in self._open_by_user:
            self._sent.pop(user_id, None)

    def message(self, user_id: int) -> str | None:
        """Count one location message of this user; the reason it is refused, or None."""
        now = time.monotonic()
        sent = self._sent.setdefault(user_id, deque())
        while sent and sent[0] <= now - 1.0:
            sent.popleft()
        if len(sent) >= self.user_messages:
            return f"too many messages: at most {self.user_messages} a second from all of your sockets"
        sent.append(now)
        return None


def _loopback(address: str) -> bool:
    try:
        return ip_address(address).is_loopback
    except ValueError:
        return False
