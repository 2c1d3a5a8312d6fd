"""The observer's metrics stay bounded whatever clients send, and feed the tracker."""

from __future__ import annotations

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from sidus_appliance.dhcp.leases import InMemoryLeaseStore
from sidus_appliance.observe.observer import Observer
from tests.unit.test_boot_menus import MASTER, make_config


def series(observer: Observer, name: str) -> list[dict[str, str]]:
    text = generate_latest(observer.registry).decode()
    return [s.labels for f in text_string_to_metric_families(text) for s in f.samples if s.name == name]


def test_crafted_arches_share_one_label(tmp_path) -> None:
    observer = Observer(make_config(tmp_path), InMemoryLeaseStore())
    for arch in range(2000):  # option 93 is the client's to choose
        observer.dhcp("52:54:00:00:00:01", "DISCOVER", "OFFER", None, "pxe", arch, "pxelinux.0")
    arches = {labels["arch"] for labels in series(observer, "sidus_dhcp_decisions_total")}
    assert arches == {"0", "6", "7", "9", "16", "other"}


def test_the_master_reservation_reaches_the_tracker_with_its_profile(tmp_path) -> None:
    observer = Observer(make_config(tmp_path), InMemoryLeaseStore())
    observer.dhcp(MASTER, "REQUEST", "ACK", "10.20.17.253", "pxe", 7, "efi64/syslinux.efi")
    (row,) = observer.tracker.snapshot(0.0)
    assert (row["mac"], row["profile"]) == (MASTER, "master")
