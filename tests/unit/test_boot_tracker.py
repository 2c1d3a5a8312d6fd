"""The sans-IO boot tracker, fed with the event sequences real boots produce."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidus_appliance.boot.model import ClientKind
from sidus_appliance.observe.events import DhcpEvent, TransferEvent, Transport
from sidus_appliance.observe.tracker import BUCKETS, PHASES, BootTracker, Phase

ROW_KEYS = {"mac", "name", "address", "firmware", "arch", "loader", "profile", "state", "phase", "stuck_at",
            "started", "duration", "last_seen", "phases"}
PHASE_KEYS = {"phase", "start", "end", "bytes", "retransmits", "transport"}
T0 = 1796049311.25  # epoch seconds, as the services stamp events


class Client:
    """One machine's side of a boot: makes the events the services would emit for it."""

    def __init__(self, mac: str = "52:54:00:5a:00:01", address: str = "10.20.17.12", client: str = "pxe",
                 arch: int = 0, loader: str = "pxelinux.0", name: str = "dhcp-12") -> None:
        self.mac, self.address, self.client = mac, address, client
        self.arch, self.loader, self.name = arch, loader, name

    def dhcp(self, time: float, message: str, action: str, client: str | None = None) -> DhcpEvent:
        client = client or self.client
        boot = client != "plain"
        address = self.address if action in ("OFFER", "ACK") else None
        return DhcpEvent(time, self.mac, message, action, address, client, self.arch if boot else None,
                         self.loader if boot else None, self.name, "default")

    def dora(self, time: float, client: str | None = None) -> list[DhcpEvent]:
        return [self.dhcp(time, "DISCOVER", "OFFER", client), self.dhcp(time + 0.5, "REQUEST", "ACK", client)]

    def transfer(self, time: float, name: str, kind: str = "file", size: int = 1000, seconds: float = 0.1,
                 transport: Transport = Transport.TFTP, retransmits: int = 0, ok: bool = True) -> TransferEvent:
        return TransferEvent(time, self.address, name, kind, transport, size, size if ok else size // 2, seconds,
                             retransmits, ok)


def bios_boot(c: Client, t: float = T0, kernel_seconds: float = 5.0) -> list[DhcpEvent | TransferEvent]:
    """SeaBIOS PXE -> pxelinux.0 -> ldlinux.c32 -> menu -> kernel -> initrd -> the system's DHCP
    (with the default kernel_seconds: kernel ends at t+8, initrd at t+14, the system's ACK at t+17.5)."""
    k = t + 3.0 + kernel_seconds
    return [
        *c.dora(t),  # t .. t+0.5
        c.transfer(t + 1.0, "pxelinux.0", size=42_000, seconds=0.2),
        c.transfer(t + 1.5, "ldlinux.c32", size=120_000, seconds=0.3, retransmits=2),
        c.transfer(t + 2.0, f"pxelinux.cfg/01-{c.mac.replace(':', '-')}", "menu", size=900, seconds=0.05),
        c.transfer(k, "vmlinuz-6.1.0-13-amd64@base", "kernel", size=8_000_000, seconds=kernel_seconds),
        c.transfer(k + 6.0, "initrd.img-6.1.0-13-amd64@base", "kernel", size=30_000_000, seconds=5.5),
        *c.dora(k + 9.0, "plain"),
    ]


def fed(events: list[DhcpEvent | TransferEvent], tracker: BootTracker | None = None) -> BootTracker:
    tracker = BootTracker() if tracker is None else tracker
    for event in events:
        tracker.feed(event)
    return tracker


def row_of(tracker: BootTracker, mac: str, now: float) -> dict:
    (row,) = tracker.snapshot(now, [mac])
    return row


def spans(row: dict) -> dict[str, dict]:
    return {span["phase"]: span for span in row["phases"]}


# ------------------------------------------------------------------ whole boots

def test_bios_boot_fills_every_phase_and_is_booted() -> None:
    c = Client()
    tracker = fed(bios_boot(c))
    row = row_of(tracker, c.mac, T0 + 60)
    assert set(row) == ROW_KEYS
    assert row["mac"] == c.mac and row["name"] == "dhcp-12" and row["address"] == "10.20.17.12"
    assert (row["firmware"], row["arch"], row["loader"], row["profile"]) == ("pxe", 0, "pxelinux.0", "default")
    assert (row["state"], row["phase"], row["stuck_at"]) == ("booted", "system-dhcp", None)
    assert row["started"] == T0 and row["last_seen"] == T0 + 17.5
    assert row["duration"] == pytest.approx(17.5)  # to the system's ACK, not to `now`
    assert [span["phase"] for span in row["phases"]] == [phase.value for phase in PHASES]
    assert all(set(span) == PHASE_KEYS for span in row["phases"])
    by_phase = spans(row)
    assert by_phase["pxe-dhcp"] == {"phase": "pxe-dhcp", "start": T0, "end": T0 + 0.5, "bytes": 0,
                                    "retransmits": 0, "transport": None}
    # pxelinux.0 and ldlinux.c32 merge into one loader phase; a transfer spans [end - seconds, end]
    assert by_phase["loader"] == {"phase": "loader", "start": pytest.approx(T0 + 0.8), "end": T0 + 1.5,
                                  "bytes": 162_000, "retransmits": 2, "transport": "tftp"}
    assert by_phase["menu"]["bytes"] == 900
    assert by_phase["kernel"]["start"] == pytest.approx(T0 + 3.0) and by_phase["kernel"]["end"] == T0 + 8.0
    assert by_phase["initrd"]["bytes"] == 30_000_000
    assert by_phase["system-dhcp"]["start"] == T0 + 17 and by_phase["system-dhcp"]["end"] == T0 + 17.5
    assert tracker.boots_completed() == 1
    tracker.poll(T0 + 10_000)  # a booted machine never becomes stuck
    assert row_of(tracker, c.mac, T0 + 10_000)["state"] == "booted"


def test_http_boot_records_the_http_transport() -> None:
    c = Client(client="http", arch=16, loader="http://10.20.17.1/efi64/shimx64.efi")
    http = Transport.HTTP
    tracker = fed([
        *c.dora(T0),
        c.transfer(T0 + 1, "efi64/shimx64.efi", size=950_000, seconds=0.2, transport=http),
        c.transfer(T0 + 2, "efi64/grubx64.efi", size=2_500_000, seconds=0.4, transport=http),
        c.transfer(T0 + 2.5, "grub/grub.cfg", "menu", transport=http),
        c.transfer(T0 + 2.6, f"grub/grub.cfg-{c.mac}", "menu", transport=http),
        c.transfer(T0 + 5, "vmlinuz-6.1.0-13-amd64@base", "kernel", seconds=2, transport=http),
        c.transfer(T0 + 9, "initrd.img-6.1.0-13-amd64@base", "kernel", seconds=3, transport=http),
        *c.dora(T0 + 12, "plain"),
    ])
    row = row_of(tracker, c.mac, T0 + 20)
    assert (row["firmware"], row["arch"], row["loader"]) == ("http", 16, "http://10.20.17.1/efi64/shimx64.efi")
    assert row["state"] == "booted" and row["duration"] == pytest.approx(12.5)
    by_phase = spans(row)
    assert by_phase["loader"]["transport"] == "http" and by_phase["loader"]["bytes"] == 3_450_000
    assert by_phase["menu"]["start"] == pytest.approx(T0 + 2.4) and by_phase["menu"]["end"] == T0 + 2.6
    assert {by_phase[p]["transport"] for p in ("loader", "menu", "kernel", "initrd")} == {"http"}
    assert by_phase["pxe-dhcp"]["transport"] is None


def test_ipxe_chainloaded_by_the_firmware_is_the_same_boot() -> None:
    c = Client(loader="undionly.kpxe")
    tracker = fed([*c.dora(T0), c.transfer(T0 + 1, "undionly.kpxe"), *c.dora(T0 + 2, "ipxe")])
    assert len(tracker.boots(c.mac, T0 + 3)) == 1
    row = row_of(tracker, c.mac, T0 + 3)
    assert row["firmware"] == "ipxe" and row["phase"] == "pxe-dhcp" and row["state"] == "booting"
    assert (spans(row)["pxe-dhcp"]["start"], spans(row)["pxe-dhcp"]["end"]) == (T0, T0 + 2.5)


# ------------------------------------------------------------------ stuck, reboots

def test_stuck_at_kernel_then_progress_resumes() -> None:
    c = Client()
    events = bios_boot(c)
    tracker = fed(events[:6])  # up to the kernel, ended at T0 + 8
    tracker.poll(T0 + 8 + 119.9)
    assert row_of(tracker, c.mac, T0 + 127.9)["state"] == "booting"
    version = tracker.version
    tracker.poll(T0 + 8 + 120)
    row = row_of(tracker, c.mac, T0 + 500)
    assert (row["state"], row["phase"], row["stuck_at"]) == ("stuck", "kernel", "kernel")
    assert row["duration"] == pytest.approx(8.0)  # up to its last progress, not growing with `now`
    assert tracker.changed_since(version) == [c.mac]
    version = tracker.version
    tracker.poll(T0 + 600)  # already stuck: nothing changes
    assert tracker.version == version

    tracker.feed(c.transfer(T0 + 300, "initrd.img-6.1.0-13-amd64@base", "kernel"))
    row = row_of(tracker, c.mac, T0 + 301)
    assert (row["state"], row["phase"], row["stuck_at"]) == ("booting", "initrd", None)
    assert row["duration"] == pytest.approx(301.0)
    tracker.feed(c.dhcp(T0 + 302, "REQUEST", "ACK", "plain"))
    assert row_of(tracker, c.mac, T0 + 400)["state"] == "booted" and len(tracker.boots(c.mac, 0)) == 1


def test_a_slow_kernel_after_stuck_still_boots() -> None:
    c = Client()
    tracker = fed(bios_boot(c)[:7])  # the initrd ended at T0 + 14
    tracker.poll(T0 + 200)
    assert row_of(tracker, c.mac, T0 + 200)["stuck_at"] == "initrd"
    tracker.feed(c.dhcp(T0 + 201, "REQUEST", "ACK", "plain"))
    assert row_of(tracker, c.mac, T0 + 201)["state"] == "booted" and tracker.boots_completed() == 1


def test_stuck_before_any_transfer() -> None:
    c = Client()
    tracker = fed(c.dora(T0))
    tracker.poll(T0 + 120.5)
    assert row_of(tracker, c.mac, T0 + 121)["stuck_at"] == "pxe-dhcp"


def test_a_plain_ack_before_the_kernel_is_no_boot() -> None:
    """A machine that left the menu for its local disk: its system's DHCP does not finish the network boot."""
    c = Client()
    tracker = fed([*bios_boot(c)[:5], *c.dora(T0 + 30, "plain")])
    row = row_of(tracker, c.mac, T0 + 31)
    assert row["state"] == "booting" and "system-dhcp" not in spans(row) and row["last_seen"] == T0 + 30.5
    assert tracker.boots_completed() == 0


def test_reboot_mid_boot_starts_a_new_boot_and_keeps_the_old() -> None:
    c = Client()
    tracker = fed(bios_boot(c)[:6], BootTracker(boots_kept=3))  # kernel loaded at T0 + 8
    tracker.feed(c.dhcp(T0 + 20, "DISCOVER", "OFFER"))
    old, new = tracker.boots(c.mac, T0 + 21)
    assert (old["state"], old["stuck_at"]) == ("stuck", "kernel")  # it stopped there
    assert (new["state"], new["phase"], new["started"]) == ("booting", "pxe-dhcp", T0 + 20)
    assert [span["phase"] for span in new["phases"]] == ["pxe-dhcp"]
    assert row_of(tracker, c.mac, T0 + 21) == new
    # the first DHCP merges into the boot at pxe-dhcp; each menu read then puts the boot past the loader
    for n in range(5):
        tracker.feed(c.dhcp(T0 + 100 + n, "DISCOVER", "OFFER"))
        tracker.feed(c.transfer(T0 + 100.5 + n, "pxelinux.cfg/default", "menu"))  # past the loader
    boots = tracker.boots(c.mac, T0 + 200)
    assert len(boots) == 3 and [b["started"] for b in boots] == [T0 + 102, T0 + 103, T0 + 104]


def test_pxe_dhcp_after_booted_or_stuck_is_a_new_boot() -> None:
    c = Client()
    tracker = fed(bios_boot(c))
    tracker.feed(c.dhcp(T0 + 100, "DISCOVER", "OFFER"))
    assert [b["state"] for b in tracker.boots(c.mac, T0 + 100)] == ["booted", "booting"]
    tracker.poll(T0 + 300)
    tracker.feed(c.dhcp(T0 + 301, "DISCOVER", "OFFER"))  # stuck at pxe-dhcp, the firmware tries again
    assert [b["state"] for b in tracker.boots(c.mac, T0 + 301)] == ["booted", "stuck", "booting"]


def test_a_booted_system_fetching_a_file_is_not_a_boot() -> None:
    c = Client()
    tracker = fed(bios_boot(c))
    before = row_of(tracker, c.mac, T0 + 50)
    tracker.feed(c.transfer(T0 + 50, "pxelinux.0", transport=Transport.HTTP))
    after = row_of(tracker, c.mac, T0 + 50)
    assert after["last_seen"] == T0 + 50 and after["phases"] == before["phases"] and after["state"] == "booted"


# ------------------------------------------------------------------ attribution, bounds

def test_two_machines_interleaved_are_told_apart_by_address() -> None:
    a = Client()
    b = Client(mac="52:54:00:5a:00:02", address="10.20.17.13", name="dhcp-13")
    boot_a, boot_b = bios_boot(a), bios_boot(b, T0 + 0.25)
    interleaved = [event for pair in zip(boot_a, boot_b, strict=True) for event in pair]
    tracker = fed(interleaved)
    rows = tracker.snapshot(T0 + 60)
    assert [row["mac"] for row in rows] == [a.mac, b.mac]
    ra, rb = rows
    assert (ra["state"], rb["state"]) == ("booted", "booted") and tracker.boots_completed() == 2
    assert (ra["address"], rb["address"]) == ("10.20.17.12", "10.20.17.13")
    assert ra["started"] == T0 and rb["started"] == T0 + 0.25
    assert spans(ra)["loader"]["bytes"] == spans(rb)["loader"]["bytes"] == 162_000
    assert tracker.ignored == 0


def test_unknown_address_is_ignored_and_counted() -> None:
    c = Client()
    tracker = BootTracker()
    tracker.feed(c.transfer(T0, "pxelinux.0"))  # no ACK seen for 10.20.17.12 yet
    assert tracker.ignored == 1 and tracker.version == 0 and tracker.snapshot(T0) == [] and tracker.tracked == 0
    fed(bios_boot(c), tracker)
    stranger = Client(mac="52:54:00:5a:00:99", address="10.20.17.99")
    tracker.feed(stranger.transfer(T0 + 20, "vmlinuz-6.1.0-13-amd64@base", "kernel"))
    tracker.feed(DhcpEvent(math.nan, c.mac, "DISCOVER", "OFFER", None, "pxe", 0, None, None, "default"))
    assert tracker.ignored == 3 and spans(row_of(tracker, c.mac, T0 + 30))["kernel"]["bytes"] == 8_000_000


def test_only_an_answered_boot_client_creates_a_machine() -> None:
    c = Client()
    tracker = fed([
        c.dhcp(T0, "DISCOVER", "IGNORE"),
        c.dhcp(T0, "DISCOVER", "DROP"),
        *c.dora(T0 + 1, "plain"),  # booted before the appliance started: renewing its lease
    ])
    assert tracker.tracked == 0 and tracker.version == 0 and tracker.ignored == 0
    tracker.feed(c.transfer(T0 + 2, "pxelinux.0"))  # that plain ACK taught no address either
    assert tracker.ignored == 1


def test_the_least_recently_seen_machine_is_forgotten() -> None:
    clients = [Client(mac=f"52:54:00:5a:00:0{n}", address=f"10.20.17.{n}") for n in range(1, 5)]
    tracker = BootTracker(max_machines=3)
    for n, c in enumerate(clients[:3]):
        fed(c.dora(T0 + n), tracker)
    fed([clients[0].transfer(T0 + 5, "pxelinux.0")], tracker)  # 1 seen again: 2 is the least recent
    version = tracker.version
    fed(clients[3].dora(T0 + 6), tracker)
    assert tracker.tracked == 3
    assert [row["mac"] for row in tracker.snapshot(T0 + 7)] == [clients[n].mac for n in (0, 2, 3)]
    assert tracker.changed_since(0) == [clients[n].mac for n in (2, 0, 3)]
    assert tracker.changed_since(version) == [clients[3].mac]
    tracker.feed(clients[1].transfer(T0 + 8, "pxelinux.0"))  # its address is forgotten with it
    assert tracker.ignored == 1 and tracker.boots(clients[1].mac, T0 + 8) == []


def test_a_lease_that_moves_follows_its_new_owner() -> None:
    a = Client()
    b = Client(mac="52:54:00:5a:00:02", address="10.20.17.13")
    tracker = fed([*a.dora(T0), *b.dora(T0 + 1)])
    moved = Client(mac=b.mac, address=a.address)
    fed(moved.dora(T0 + 2), tracker)  # b now holds a's old address
    tracker.feed(moved.transfer(T0 + 3, "pxelinux.0"))
    ra, rb = tracker.snapshot(T0 + 4)
    assert ra["address"] is None and rb["address"] == a.address
    assert "loader" in spans(rb) and "loader" not in spans(ra)
    tracker.feed(b.transfer(T0 + 4, "pxelinux.0"))  # b's old address maps to nobody now
    assert tracker.ignored == 1


def test_the_services_enums_work_as_client_and_transport() -> None:
    """DHCP may pass its ClientKind (a StrEnum) and TFTP a plain "tftp": rows still carry plain strings."""
    c = Client()
    tracker = fed([
        DhcpEvent(T0, c.mac, "REQUEST", "ACK", c.address, ClientKind.PXE, 0, "pxelinux.0", None, "default"),
        TransferEvent(T0 + 8, c.address, "vmlinuz-1@a", "kernel", "tftp", 10, 10, 1.0, 0, True),  # type: ignore[arg-type]
        DhcpEvent(T0 + 9, c.mac, "REQUEST", "ACK", c.address, ClientKind.PLAIN, None, None, None, "default"),
    ])
    row = row_of(tracker, c.mac, T0 + 10)
    assert row["state"] == "booted" and type(row["firmware"]) is str and type(row["phases"][1]["transport"]) is str


def test_constructor_refuses_senseless_bounds() -> None:
    for kwargs in ({"stuck_after": 0}, {"stuck_after": math.nan}, {"max_machines": 0}, {"boots_kept": 0}):
        with pytest.raises(ValueError):
            BootTracker(**kwargs)


# ------------------------------------------------------------------ outputs

def test_version_and_changed_since() -> None:
    a, b = Client(), Client(mac="52:54:00:5a:00:02", address="10.20.17.13")
    tracker = BootTracker()
    assert tracker.version == 0 and tracker.changed_since(0) == []
    fed(a.dora(T0), tracker)
    v1 = tracker.version
    assert v1 > 0 and tracker.changed_since(0) == [a.mac] and tracker.changed_since(v1) == []
    fed(b.dora(T0 + 1), tracker)
    v2 = tracker.version
    assert v2 > v1 and tracker.changed_since(v1) == [b.mac]
    tracker.feed(a.transfer(T0 + 2, "pxelinux.0"))
    assert tracker.changed_since(v1) == [b.mac, a.mac]  # oldest change first, each MAC once
    assert tracker.changed_since(v2) == [a.mac]
    assert sorted(tracker.changed_since(tracker.version + 10)) == [a.mac, b.mac]  # not ours: everything
    v3 = tracker.version
    tracker.poll(T0 + 3)  # nothing stuck yet: no change
    assert tracker.version == v3
    tracker.poll(T0 + 500)
    assert tracker.version > v3 and tracker.changed_since(v3) == [a.mac, b.mac]


def test_snapshot_is_json_and_selects_rows() -> None:
    a, b = Client(), Client(mac="52:54:00:5a:00:02", address="10.20.17.13")
    tracker = fed([*bios_boot(b), *bios_boot(a)[:6]])
    rows = tracker.snapshot(T0 + 30)
    assert json.loads(json.dumps(rows)) == rows
    for row in rows:
        assert set(row) == ROW_KEYS and all(set(span) == PHASE_KEYS for span in row["phases"])
        assert all(type(row[key]) is str for key in ("state", "phase", "firmware"))
        assert all(type(span["phase"]) is str for span in row["phases"])
    assert [row["mac"] for row in rows] == [a.mac, b.mac]
    assert rows[0]["state"] == "booting" and rows[0]["duration"] == pytest.approx(30.0)  # growing with now
    selected = tracker.snapshot(T0 + 30, [b.mac, "52:54:00:ff:ff:ff", a.mac, b.mac])
    assert [row["mac"] for row in selected] == [b.mac, a.mac]
    assert [span["phase"] for span in rows[0]["phases"]] == ["pxe-dhcp", "loader", "menu", "kernel"]


def test_histograms_are_cumulative_and_match_count_and_sum() -> None:
    tracker = BootTracker()
    expected_kernel = []
    for n, seconds in enumerate((0.05, 5.0, 7.5, 400.0)):
        c = Client(mac=f"52:54:00:5a:01:0{n}", address=f"10.20.18.{n}")
        fed(bios_boot(c, T0 + 1000 * n, kernel_seconds=seconds), tracker)
        expected_kernel.append(seconds)
    fed(bios_boot(Client(mac="52:54:00:5a:02:00", address="10.20.19.1"))[:6], tracker)  # not completed
    assert tracker.boots_completed() == 4
    buckets, total, count = tracker.histogram(Phase.KERNEL)
    assert [bound for bound, _ in buckets] == list(BUCKETS) and buckets[-1][0] == math.inf
    assert count == 4 and total == pytest.approx(sum(expected_kernel))
    cumulative = dict(buckets)
    # `le` semantics: 5.0 lands in the 5.0 bucket, 400 only in +Inf
    assert (cumulative[0.1], cumulative[2.0], cumulative[5.0], cumulative[10.0], cumulative[300.0]) == (1, 1, 2, 3, 3)
    assert cumulative[math.inf] == count
    for phase in PHASES:
        buckets, total, count = tracker.histogram(phase.value)  # a phase name works too
        counts = [n for _, n in buckets]
        assert counts == sorted(counts) and counts[-1] == count == 4 and total >= 0
    assert tracker.histogram("system-dhcp")[1] == pytest.approx(4 * 0.5)
    buckets, total, count = tracker.boot_histogram()
    assert count == 4 and buckets[-1][1] == 4 and total == pytest.approx(sum(12.5 + k for k in expected_kernel))
    empty = BootTracker().histogram(Phase.MENU)
    assert empty == ([(bound, 0) for bound in BUCKETS], 0.0, 0)


# ------------------------------------------------------------------ arbitrary sequences

MACS = [f"52:54:00:00:00:0{n}" for n in range(6)]
ADDRESSES = [f"10.0.0.{n}" for n in range(6)]
TIMES = st.floats(min_value=0, max_value=2000, allow_nan=False)
DHCP = st.builds(
    DhcpEvent, time=TIMES, mac=st.sampled_from(MACS),
    message=st.sampled_from(["DISCOVER", "REQUEST", "DECLINE", "RELEASE", "INFORM"]),
    action=st.sampled_from(["OFFER", "ACK", "NAK", "IGNORE", "DROP", "RELEASE", "QUARANTINE"]),
    address=st.one_of(st.none(), st.sampled_from(ADDRESSES)),
    client=st.sampled_from(["pxe", "ipxe", "http", "plain", "other"]),
    arch=st.one_of(st.none(), st.integers(0, 65535)), loader=st.one_of(st.none(), st.text(max_size=10)),
    hostname=st.one_of(st.none(), st.text(max_size=10)), profile=st.sampled_from(["default", "master"]),
)
TRANSFER = st.builds(
    TransferEvent, time=TIMES, client=st.sampled_from([*ADDRESSES, "10.9.9.9"]),
    name=st.sampled_from(["pxelinux.0", "vmlinuz-1@a", "initrd.img-1@a", "grub/grub.cfg", "x"]),
    kind=st.sampled_from(["file", "menu", "kernel", "other"]), transport=st.sampled_from(list(Transport)),
    size=st.integers(-10, 10**9), sent=st.integers(-10, 10**9),
    seconds=st.floats(allow_nan=True, allow_infinity=True), retransmits=st.integers(-5, 100), ok=st.booleans(),
)
STEPS = st.lists(st.one_of(DHCP, TRANSFER, TIMES.map(lambda now: ("poll", now))), max_size=60)


@settings(max_examples=300, deadline=None)
@given(STEPS, st.integers(1, 4), st.integers(1, 3))
def test_arbitrary_events_never_raise_and_keep_the_bounds(steps, max_machines, boots_kept) -> None:
    tracker = BootTracker(stuck_after=30, max_machines=max_machines, boots_kept=boots_kept)
    version = 0
    for step in steps:
        if isinstance(step, tuple):
            tracker.poll(step[1])
        else:
            tracker.feed(step)
        assert tracker.version >= version
        version = tracker.version
        assert tracker.tracked <= max_machines
    rows = tracker.snapshot(2000.0)
    assert len(rows) == tracker.tracked and json.loads(json.dumps(rows)) == rows
    assert set(tracker.changed_since(0)) == {row["mac"] for row in rows}
    for row in rows:
        boots = tracker.boots(row["mac"], 2000.0)
        assert 1 <= len(boots) <= boots_kept and boots[-1] == row
        assert sum(b["state"] == "booting" for b in boots[:-1]) == 0  # only the last boot can be running
        assert row["duration"] >= 0 and row["phases"] and row["phases"][0]["phase"] in {p.value for p in PHASES}
    addresses = [row["address"] for row in rows if row["address"] is not None]
    assert len(addresses) == len(set(addresses))  # an address belongs to one machine at a time
    completed = tracker.boots_completed()
    for phase in PHASES:
        buckets, total, count = tracker.histogram(phase)
        counts = [n for _, n in buckets]
        assert counts == sorted(counts) and counts[-1] == count and total >= 0
    assert tracker.histogram(Phase.PXE_DHCP)[2] == tracker.histogram(Phase.SYSTEM_DHCP)[2] == completed
    assert tracker.boot_histogram()[2] == completed
