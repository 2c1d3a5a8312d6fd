"""Where the services report what they did: the boot tracker and the Prometheus metrics.

The services call `dhcp()` once per DHCP decision and `transfer()` once per ended TFTP or HTTP
transfer; counters that already exist inside the protocol cores (DNS rcodes, malformed DHCP,
refusals) are read only when /metrics is scraped (StatsCollector), so the hot paths pay one
event object and a few counter increments, nothing more.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from ..config import Config
from ..dhcp.leases import LeaseState
from .events import DhcpEvent, TransferEvent, Transport
from .tracker import PHASES, BootTracker


class Observer:
    def __init__(self, config: Config, leases: Any, tracker: BootTracker | None = None,
                 registry: CollectorRegistry | None = None) -> None:
        self.config = config
        self.leases = leases
        self.tracker = tracker if tracker is not None else BootTracker(stuck_after=config.management.stuck_after)
        self.registry = registry if registry is not None else CollectorRegistry()
        self._index(config)
        r = self.registry
        self.dhcp_decisions = Counter("sidus_dhcp_decisions", "DHCP decisions by message, action and client arch",
                                      ["message", "action", "client", "arch"], registry=r)
        self.transfers = Counter("sidus_transfers", "Ended TFTP/HTTP transfers by transport, kind and outcome",
                                 ["transport", "kind", "outcome"], registry=r)
        self.transfer_bytes = Counter("sidus_transfer_bytes", "Bytes sent by TFTP/HTTP transfers", ["transport"],
                                      registry=r)
        self.resent_blocks = Counter("sidus_tftp_resent_blocks", "TFTP DATA blocks sent again", registry=r)
        self.stats = StatsCollector(self)
        r.register(self.stats)
        r.register(PoolCollector(self))
        r.register(BootCollector(self))
        ProcessCollector(registry=r)  # process_cpu_seconds_total, process_resident_memory_bytes, ...

    def reload(self, config: Config) -> None:
        self.config = config
        self.tracker.stuck_after = config.management.stuck_after
        self._index(config)

    def _index(self, config: Config) -> None:
        # Per decision on the DHCP path: a dict, not Config.host_by_mac's scan of every reservation.
        self._hosts = {h.mac: h for h in config.hosts}
        # The arch label takes the arches the config names; any other (option 93 is the client's to
        # choose, 65,536 values) counts as "other", so a crafted flood cannot grow /metrics without end.
        self._arches = {*config.dhcp.boot_files, *(a for h in config.hosts for a in h.boot_files)}

    # ------------------------------------------------------------------ events from the services

    def dhcp(self, mac: str, message: str, action: str, address: Any, client: str, arch: int | None,
             loader: str | None) -> None:
        arch_label = "-" if arch is None else str(arch) if arch in self._arches else "other"
        self.dhcp_decisions.labels(message, action, client, arch_label).inc()
        if action not in ("OFFER", "ACK"):
            return
        lease = self.leases.by_mac(mac) if self.leases is not None else None
        host = self._hosts.get(mac)
        self.tracker.feed(DhcpEvent(
            time.time(), mac, message, action, None if address is None else str(address), str(client), arch,
            loader, getattr(lease, "hostname", None), host.profile.value if host is not None else "default",
        ))

    def transfer(self, client: str, name: str, kind: str, transport: Transport, size: int, sent: int,
                 seconds: float, retransmits: int, ok: bool) -> None:
        self.transfers.labels(transport.value, kind, "complete" if ok else "stopped").inc()
        self.transfer_bytes.labels(transport.value).inc(sent)
        if retransmits:
            self.resent_blocks.inc(retransmits)
        self.tracker.feed(TransferEvent(time.time(), client, name, kind, transport, size, sent, seconds,
                                        retransmits, ok))


class StatsCollector:
    """Counters the protocol cores keep anyway, read at scrape time."""

    def __init__(self, observer: Observer) -> None:
        self.observer = observer
        self.sources: dict[str, Callable[[], Mapping[str, int]]] = {}  # service name -> its counters

    def add(self, name: str, counters: Callable[[], Mapping[str, int]]) -> None:
        self.sources[name] = counters

    def collect(self) -> Iterator[Metric]:
        for name, counters in sorted(self.sources.items()):
            family = CounterMetricFamily(f"sidus_{name}_events", f"{name.upper()} events counted by the service",
                                         labels=["event"])
            for event, value in sorted(counters().items()):
                family.add_metric([str(event)], value)
            yield family


class PoolCollector:
    """The dynamic pool: its size, addresses held (leased or offered), addresses in DECLINE quarantine."""

    def __init__(self, observer: Observer) -> None:
        self.observer = observer

    def collect(self) -> Iterable[Metric]:
        pool, leases = self.observer.config.dhcp.pool, self.observer.leases
        size = 0 if pool is None else int(pool.end) - int(pool.start) + 1
        used = quarantined = 0
        for lease in leases.all() if leases is not None else ():
            if pool is None or lease.address not in pool:
                continue
            if lease.state == LeaseState.DECLINED:
                quarantined += 1
            else:
                used += 1
        family = GaugeMetricFamily("sidus_dhcp_pool_addresses", "Dynamic pool addresses by use", labels=["use"])
        family.add_metric(["size"], size)
        family.add_metric(["used"], used)
        family.add_metric(["quarantined"], quarantined)
        family.add_metric(["free"], max(0, size - used - quarantined))
        yield family


class BootCollector:
    """Boots seen by the tracker: completed, and how long each phase took."""

    def __init__(self, observer: Observer) -> None:
        self.observer = observer

    def collect(self) -> Iterable[Metric]:
        tracker = self.observer.tracker
        yield CounterMetricFamily("sidus_boots_completed", "Boots that reached the booted system's own DHCP",
                                  value=tracker.boots_completed())
        yield CounterMetricFamily("sidus_boot_events_ignored", "Transfers from addresses no DHCP ACK explained",
                                  value=tracker.ignored)
        family = HistogramMetricFamily("sidus_boot_phase_seconds", "Duration of each phase of completed boots",
                                       labels=["phase"])
        for phase in PHASES:
            buckets, total, _count = tracker.histogram(phase)
            family.add_metric([phase.value], [(_le(bound), count) for bound, count in buckets], total)
        yield family


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(float(bound))


