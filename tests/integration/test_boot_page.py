"""See the classroom boot: a real QEMU client boots from the appliance while a real browser
(headless Chromium in the appliance's namespace) watches the management page, and /metrics
counts what happened. The page listens on 127.0.0.1 of the appliance's namespace only."""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from sidus_appliance import bootfiles
from sidus_appliance.config import load_config
from sidus_appliance.lab import ApplianceProcess, Lab, qemu, testkernel, write_lab_config
from sidus_appliance.lab.browser import Browser

from ..conftest import require
from .test_qemu_boot import BOOT_TIMEOUT, INSTANCE

pytestmark = [pytest.mark.integration, pytest.mark.qemu]

MAC = "52:54:00:5d:00:01"
PAGE = "http://127.0.0.1:8067/"
PHASES = ["pxe-dhcp", "loader", "menu", "kernel", "initrd", "system-dhcp"]


def metrics(lab: Lab) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = subprocess.run(lab.server_argv(["curl", "-sS", "--max-time", "10", PAGE + "metrics"]),
                          capture_output=True, text=True, timeout=30, check=True).stdout
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_the_page_shows_a_real_boot_and_metrics_count_it(
        lab: Lab, start_appliance: Callable[..., ApplianceProcess], test_kernel: testkernel.TestKernel,
        tmp_path: Path) -> None:
    require("the management page in Chromium", tools=["chromium", "curl"])
    workdir = tmp_path / "appliance"
    instance_root = tmp_path / "nfsroot" / INSTANCE
    testkernel.publish(instance_root, test_kernel)
    overrides = testkernel.instance_overrides(instance_root, INSTANCE)
    assert not bootfiles.install(load_config(write_lab_config(workdir, overrides))).missing
    appliance = start_appliance(overrides, workdir=workdir)
    tap = lab.add_tap()
    result: list[qemu.BootResult] = []
    with Browser(netns=lab.server_ns) as browser:
        browser.open(PAGE)
        booting = threading.Thread(target=lambda: result.append(qemu.boot(
            "bios", MAC, tap, tmp_path / "qemu", lab.server_ns, timeout=BOOT_TIMEOUT, kernel=test_kernel.vmlinuz)))
        booting.start()
        try:
            # Live: the row appears while the machine boots, and reaches "booted" without a reload.
            browser.wait_for(f"document.querySelector('tr[data-mac=\"{MAC}\"]') !== null", timeout=BOOT_TIMEOUT)
            browser.wait_for(f"document.querySelector('tr[data-mac=\"{MAC}\"][data-state=\"booted\"]') !== null",
                             timeout=BOOT_TIMEOUT)
        finally:
            booting.join(BOOT_TIMEOUT + 30)
        browser.evaluate(f"document.querySelector('tr[data-mac=\"{MAC}\"]').click()")
        bars = browser.wait_for(
            f"(() => {{ const b = [...document.querySelectorAll('#timeline[data-mac=\"{MAC}\"] .bar')]"
            ".map(e => e.dataset.phase); return b.length === 6 ? b : null; })()", timeout=20)
        assert bars == PHASES
        shot = browser.screenshot(tmp_path / "boot-page.png")
        print(f"screenshot: {shot}")
    assert result and result[0].ok, result[0].summary() if result else "no boot result"

    # /metrics: the counters say what this test did.
    subprocess.run(lab.server_argv(["dig", "@10.20.17.254", "+short", "+time=2", "gateway.sidus.zone"]),
                   capture_output=True, timeout=20, check=True)
    got = metrics(lab)
    assert got[("sidus_boots_completed_total", ())] >= 1
    acks = sum(v for (name, labels), v in got.items()
               if name == "sidus_dhcp_decisions_total" and ("action", "ACK") in labels)
    assert acks >= 2  # the firmware's PXE ACK and the booted system's own
    kernels = got[("sidus_transfers_total", (("kind", "kernel"), ("outcome", "complete"), ("transport", "tftp")))]
    assert kernels >= 2  # vmlinuz and initrd
    sizes = test_kernel.vmlinuz.stat().st_size + test_kernel.initrd.stat().st_size
    assert got[("sidus_transfer_bytes_total", (("transport", "tftp"),))] >= sizes
    assert got[("sidus_boot_phase_seconds_count", (("phase", "kernel"),))] >= 1
    assert got[("sidus_dhcp_pool_addresses", (("use", "used"),))] >= 1
    assert got[("process_resident_memory_bytes", ())] > 0
    answered = sum(got.get(("sidus_dns_events_total", (("event", event),)), 0) for event in ("answered", "hits"))
    assert answered >= 1  # precomputed answers count as hits

    # Not on the classroom side: a client cannot reach the page, by the appliance's address or any.
    client = lab.add_client(address="10.20.17.5/24")
    for url in ("http://10.20.17.254:8067/", PAGE):
        reached = client.run(["curl", "-sS", "--max-time", "5", "-o", "/dev/null", url], timeout=20)
        assert reached.returncode != 0, url
    assert "Traceback" not in appliance.log()
