"""Connections admitted per client address and in all (sans-IO): one host cannot take them all."""

from __future__ import annotations

from collections import Counter


class ConnectionBudget:
    def __init__(self, total: int, per_client: int) -> None:
        self.total, self.per_client = total, per_client
        self.by_client: Counter[str] = Counter()

    def __len__(self) -> int:
        return sum(self.by_client.values())

    def admit(self, client: str) -> str | None:
        """None: admitted (count it); otherwise why not."""
        if self.by_client[client] >= self.per_client:
            return f"{self.by_client[client]} connections open from this address (at most {self.per_client})"
        if len(self) >= self.total:
            return f"{len(self)} connections open in all (at most {self.total})"
        self.by_client[client] += 1
        return None

    def release(self, client: str) -> None:
        self.by_client[client] -= 1
        if self.by_client[client] <= 0:
            del self.by_client[client]
