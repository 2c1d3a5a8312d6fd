"""The lease journal: durability, torn lines, compaction, SIGKILL in the middle of a burst."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from sidus_appliance.dhcp.leases import InMemoryLeaseStore, Lease, LeaseStore, LeaseStoreError

ROOT = Path(__file__).resolve().parents[2]


def lease(n: int, state: str = "bound", expires: float | None = None, chost: str | None = None) -> Lease:
    return Lease(f"02:00:00:00:{n >> 8:02x}:{n & 255:02x}", IPv4Address(0x0A000000 + n), f"dhcp-{n}",
                 expires, state, chost)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "leases.journal"


def test_commit_lookup_remove_in_memory() -> None:
    store = InMemoryLeaseStore()
    assert store and len(store) == 0
    a = lease(1)
    store.commit(a)
    assert store.by_mac(a.mac) == a
    assert store.by_address(a.address) == a
    moved = Lease(a.mac, IPv4Address("10.0.0.9"), "dhcp-9", None, "bound")
    store.commit(moved)
    assert store.by_address(a.address) is None
    assert store.by_address(moved.address) == moved
    assert store.remove(a.mac) == moved
    assert store.all() == [] and store.remove(a.mac) is None


def test_address_held_by_another_mac_is_refused() -> None:
    store = InMemoryLeaseStore()
    store.commit(lease(1))
    with pytest.raises(LeaseStoreError):
        store.commit(Lease("02:ff:ff:ff:ff:ff", lease(1).address, "x", None, "bound"))


def test_bound_and_declined_persist_offered_does_not(path: Path) -> None:
    with LeaseStore(path) as store:
        store.commit(lease(1, chost="pc1"))
        store.commit(lease(2, "declined", expires=5000.0))
        store.commit(lease(3, "offered", expires=100.0))
        store.commit(lease(4))
        store.remove(lease(4).mac)
    with LeaseStore(path) as again:
        assert sorted(again.all(), key=lambda le: le.mac) == [lease(1, chost="pc1"), lease(2, "declined", 5000.0)]


def test_offer_replacing_a_bound_lease_is_journalled_as_removal(path: Path) -> None:
    with LeaseStore(path) as store:
        store.commit(lease(1))
        store.commit(Lease(lease(1).mac, IPv4Address("10.0.0.50"), "x", 10.0, "offered"))
    with LeaseStore(path) as again:
        assert again.by_mac(lease(1).mac) is None


def test_torn_last_line_is_ignored_and_cut(path: Path) -> None:
    with LeaseStore(path) as store:
        for n in range(1, 4):
            store.commit(lease(n))
    full = path.read_bytes()
    path.write_bytes(full + b'{"mac":"02:00:00:00:00:09","ip":"10.0')  # killed mid-write
    with LeaseStore(path) as store:
        assert len(store.all()) == 3
        assert path.read_bytes() == full  # cut, so the next append starts a clean line
        store.commit(lease(9))
    with LeaseStore(path) as store:
        assert {le.mac for le in store.all()} == {lease(n).mac for n in (1, 2, 3, 9)}
        assert store.skipped_lines == 0


def test_corrupt_middle_line_is_skipped(path: Path) -> None:
    path.parent.mkdir(parents=True)
    good = json.dumps({"mac": lease(1).mac, "ip": "10.0.0.1", "host": "h", "exp": None, "state": "bound"})
    path.write_text(f"{good}\nnot json\n{{\"mac\": 1}}\n")
    with LeaseStore(path) as store:
        assert [le.mac for le in store.all()] == [lease(1).mac]
        assert store.skipped_lines == 2


def test_compaction_keeps_every_lease_and_shrinks_the_journal(path: Path) -> None:
    with LeaseStore(path, compact_factor=2, compact_min=10) as store:
        for round_ in range(30):
            for n in range(1, 21):
                store.commit(lease(n, expires=float(round_)))
        store.remove(lease(20).mac)
        assert store.journal_lines <= 2 * 20
        lines_on_disk = len(path.read_bytes().splitlines())
        assert lines_on_disk == store.journal_lines
        assert not path.with_name(path.name + ".tmp").exists()
        live = sorted(store.all(), key=lambda le: le.mac)
    assert lines_on_disk < 30 * 20
    with LeaseStore(path) as again:
        assert sorted(again.all(), key=lambda le: le.mac) == live
        assert len(live) == 19 and all(le.expires == 29.0 for le in live)


def test_explicit_compact_then_append(path: Path) -> None:
    with LeaseStore(path, fsync=True) as store:
        for n in range(1, 6):
            store.commit(lease(n))
            store.commit(lease(n, expires=1.0))
        store.compact()
        assert len(path.read_bytes().splitlines()) == 5
        store.commit(lease(6))  # goes to the new file, not the replaced inode
    with LeaseStore(path) as again:
        assert len(again.all()) == 6


def test_subscribers_see_old_and_new() -> None:
    store = InMemoryLeaseStore()
    seen: list[tuple[Lease | None, Lease | None]] = []
    store.subscribe(lambda old, new: seen.append((old, new)))
    store.subscribe(lambda old, new: 1 / 0)  # a broken subscriber does not break the store
    a, b = lease(1, "offered", 10.0), lease(1)
    store.commit(a)
    store.commit(b)
    store.remove(b.mac)
    assert seen == [(None, a), (a, b), (b, None)]


def test_second_process_gets_a_read_only_snapshot(path: Path) -> None:
    with LeaseStore(path) as owner:
        owner.commit(lease(1))
        # flock is per open file description: a second open in this process contends like another process.
        with LeaseStore(path) as reader:
            assert reader.readonly
            assert reader.by_mac(lease(1).mac) == lease(1)
            with pytest.raises(LeaseStoreError):
                reader.commit(lease(2))
        owner.commit(lease(3))
    with LeaseStore(path) as again:
        assert not again.readonly and len(again.all()) == 2


CHILD = textwrap.dedent(
    """
    import sys
    from ipaddress import IPv4Address
    from sidus_appliance.dhcp.leases import Lease, LeaseStore
    store = LeaseStore(sys.argv[1], compact_factor=2, compact_min=50)
    seq = int(sys.argv[2])
    while True:
        seq += 1
        n = seq % 300
        mac = f"02:00:00:00:{n >> 8:02x}:{n & 255:02x}"
        store.commit(Lease(mac, IPv4Address(0x0A000000 + n), f"dhcp-{n}", float(seq), "bound"))
        sys.stdout.write(f"{mac} {seq}\\n")
        sys.stdout.flush()
    """
)


def _burst_then_kill(path: Path, start: int, after: int, reported: dict[str, int]) -> None:
    """Run the child, keep draining its reports so it never blocks, SIGKILL it once it has
    reported `after` commits: the kill lands anywhere in commit, compaction or reporting."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(path), str(start)], stdout=subprocess.PIPE, env=env)
    count = 0
    enough = threading.Event()

    def drain() -> None:
        nonlocal count
        assert child.stdout is not None
        for line in child.stdout:
            if not line.endswith(b"\n"):
                break  # cut by the kill: that report was never completed
            mac, seq = line.split()
            reported[mac.decode()] = int(seq)
            count += 1
            if count >= after:
                enough.set()
        enough.set()

    reader = threading.Thread(target=drain)
    reader.start()
    try:
        assert enough.wait(60), "the child did not report"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(10)
        reader.join(10)
    assert child.returncode == -signal.SIGKILL


def test_sigkill_during_a_burst_loses_no_committed_lease(path: Path) -> None:
    """Every lease the child reported as committed (after commit returned) survives SIGKILL;
    the child compacts every few hundred commits and restarts on the journal it left."""
    path.parent.mkdir(parents=True)
    reported: dict[str, int] = {}
    rng = random.Random()
    for round_ in range(4):
        _burst_then_kill(path, round_ * 1_000_000, rng.randint(700, 3000), reported)
        with LeaseStore(path) as store:
            for mac, seq in reported.items():
                found = store.by_mac(mac)
                assert found is not None, (round_, mac)
                # The child may have committed more than it reported, never fewer.
                assert found.expires is not None and found.expires >= seq, (round_, mac, found.expires, seq)
    assert len(reported) == 300


@pytest.mark.parametrize("chost", ['quote"d', "back\\slash", "new\nline", "caf\u00e9 \u2603", "\x00\x1f", ""])
def test_hostile_client_hostnames_round_trip_on_one_line(path: Path, chost: str) -> None:
    with LeaseStore(path) as store:
        store.commit(lease(1, chost=chost))
        store.commit(lease(2, "declined", expires=1234.5))
    assert len(path.read_bytes().splitlines()) == 2
    with LeaseStore(path) as again:
        assert again.by_mac(lease(1).mac) == lease(1, chost=chost)
        assert again.by_mac(lease(2).mac) == lease(2, "declined", expires=1234.5)
        assert again.skipped_lines == 0


# ---------------------------------------------------------------------- failed writes, group commit


class FailingWrites:
    """os.write that writes `allow` bytes in all, then raises ENOSPC (a full disk mid-line)."""

    def __init__(self, allow: int) -> None:
        self.allow = allow
        self.real = os.write

    def __call__(self, fd: int, data: bytes | memoryview) -> int:
        if self.allow <= 0:
            raise OSError(28, "No space left on device")
        n = self.real(fd, bytes(data[: self.allow]))
        self.allow -= n
        return n


def test_a_partial_write_is_cut_and_the_next_line_starts_clean(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = LeaseStore(path)
    store.commit(lease(1))
    size = path.stat().st_size
    monkeypatch.setattr(os, "write", FailingWrites(allow=20))  # a third of the next line, then ENOSPC
    with pytest.raises(OSError):
        store.commit(lease(2))
    assert path.stat().st_size == size, "the torn bytes stayed in the journal"
    assert store.by_mac(lease(2).mac) is None, "a lease that is not on disk is in the table"
    monkeypatch.undo()  # space is back
    store.commit(lease(3))
    store.close()
    again = LeaseStore(path)
    assert again.skipped_lines == 0
    assert sorted(le.mac for le in again.all()) == [lease(1).mac, lease(3).mac]
    again.close()


def test_while_the_torn_bytes_cannot_be_cut_nothing_is_appended(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = LeaseStore(path)
    store.commit(lease(1))
    monkeypatch.setattr(os, "write", FailingWrites(allow=10))
    monkeypatch.setattr(os, "ftruncate", lambda fd, size: (_ for _ in ()).throw(OSError(5, "EIO")))
    with pytest.raises(OSError):
        store.commit(lease(2))
    monkeypatch.setattr(os, "write", FailingWrites(allow=1 << 20))
    with pytest.raises(OSError):
        store.commit(lease(3))  # refused: appending after torn bytes would corrupt this line
    monkeypatch.undo()
    store.commit(lease(4))  # the cut works again: cut first, then append
    store.close()
    again = LeaseStore(path)
    assert again.skipped_lines == 0
    assert sorted(le.mac for le in again.all()) == [lease(1).mac, lease(4).mac]
    again.close()


def test_group_commit_writes_a_burst_at_once(path: Path) -> None:
    store = LeaseStore(path, autoflush=False, fsync=True)
    for n in range(1, 6):
        store.commit(lease(n))
    store.remove(lease(5).mac)
    assert not store.durable and len(store.pending) == 6
    assert path.stat().st_size == 0, "nothing is written before write_pending()"
    mark = store.write_pending()
    store.sync()
    store.mark_durable(mark)
    assert store.durable
    store.close()
    again = LeaseStore(path)
    assert sorted(le.mac for le in again.all()) == [lease(n).mac for n in range(1, 5)]
    again.close()


def test_rollback_restores_the_table_and_tells_subscribers(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = LeaseStore(path, autoflush=False)
    store.commit(lease(1))
    store.mark_durable(store.write_pending())
    seen: list[tuple[object, object]] = []
    store.subscribe(lambda old, new: seen.append((old, new)))
    moved = Lease(lease(1).mac, IPv4Address("10.0.0.77"), "x", None, "bound")
    store.commit(moved)
    store.commit(lease(2))
    store.commit(lease(3, "offered", expires=50.0))  # memory only, undone all the same
    monkeypatch.setattr(os, "write", FailingWrites(allow=30))
    with pytest.raises(OSError):
        store.write_pending()
    monkeypatch.undo()
    assert store.rollback() == 3
    assert store.all() == [lease(1)] and store.by_address(moved.address) is None
    assert seen[-3:] == [(lease(3, "offered", 50.0), None), (lease(2), None), (moved, lease(1))]
    store.close()
    again = LeaseStore(path)
    assert again.skipped_lines == 0 and again.all() == [lease(1)]
    again.close()


def test_failed_fsync_cuts_what_it_did_not_make_durable(path: Path) -> None:
    store = LeaseStore(path, autoflush=False)
    store.commit(lease(1))
    store.mark_durable(store.write_pending())
    durable_size = path.stat().st_size
    store.commit(lease(2))
    store.write_pending()  # written, but say its fsync failed:
    assert path.stat().st_size > durable_size
    store.rollback()
    assert path.stat().st_size == durable_size
    store.close()
    assert [le.mac for le in LeaseStore(path).all()] == [lease(1).mac]


def test_changes_after_a_write_stay_undoable_while_it_syncs(path: Path) -> None:
    store = LeaseStore(path, autoflush=False)
    store.commit(lease(1))
    mark = store.write_pending()  # its fsync runs on a worker thread...
    store.commit(lease(2))  # ...while the next burst is decided
    store.mark_durable(mark)
    assert not store.durable and store.pending
    assert store.rollback() == 1
    assert [le.mac for le in store.all()] == [lease(1).mac]
    store.close()


def test_compaction_never_writes_through_a_planted_temp_link(path: Path, tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    store = LeaseStore(path)
    store.commit(lease(1))
    (path.parent / (path.name + ".tmp")).symlink_to(victim)
    store.compact()
    store.close()
    assert victim.read_text() == "precious\n"
    assert [le.mac for le in LeaseStore(path).all()] == [lease(1).mac]
