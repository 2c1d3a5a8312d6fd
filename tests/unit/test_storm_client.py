"""bench/storm_client.py's HTTP-boot client reads what the appliance writes: its DHCP request is
classified as UEFI HTTP boot, and it finds the kernel and initrd in our generated GRUB menus."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from sidus_appliance.boot import grub
from sidus_appliance.boot.loaders import DEFAULT_BOOT_FILES, Machine, boot_spec
from sidus_appliance.boot.menus import menu_for
from sidus_appliance.boot.model import ClientKind
from sidus_appliance.dhcp import codec
from tests.unit.test_boot_menus import MASTER, make_config, make_root

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture(scope="module")
def client():
    spec = importlib.util.spec_from_file_location("storm_client", BENCH / "storm_client.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["storm_client"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("storm_client", None)


def test_http_boot_request_is_classified_as_http_boot(client):
    mac = bytes.fromhex("025a00000001")
    frame = client.ip_udp(client.dhcp_message(1, 0x1234, mac, arch=16))
    pkt = codec.parse(frame[28:])  # past the IPv4 and UDP headers
    assert pkt.options[93] == b"\x00\x10" and pkt.options[60].startswith(b"HTTPClient:Arch:00016")
    spec = boot_spec(Machine("02:5a:00:00:00:01", pkt.options[93], pkt.options[60]), DEFAULT_BOOT_FILES, "pxelinux.0")
    assert spec.kind is ClientKind.HTTP and spec.over_http and spec.loader == DEFAULT_BOOT_FILES[16]
    pxe = codec.parse(client.ip_udp(client.dhcp_message(1, 0x1234, mac))[28:])
    assert pxe.options[93] == b"\x00\x00" and pxe.options[60].startswith(b"PXEClient:Arch:00000")


@pytest.mark.parametrize("device", ["(http,10.20.17.254)", ""])
def test_kernel_and_initrd_of_our_grub_menus(client, tmp_path, device):
    make_root(tmp_path, "bookworm", ["6.1.0-18-amd64"])
    config = make_config(tmp_path, [{"name": "bookworm", "modes": ["overlay", "aufs"]}])
    for mac in (None, MASTER):
        kernel, initrd = client.parse_grub_menu(grub.render(menu_for(config, mac), device))
        root = "http://10.20.17.254"
        assert client.grub_url(kernel, root) == f"{root}/vmlinuz-6.1.0-18-amd64@bookworm"
        assert client.grub_url(initrd, root) == f"{root}/initrd.img-6.1.0-18-amd64@bookworm"


def test_default_entry_is_the_one_named_by_set_default(client):
    text = "\n".join([
        "set default=second",
        "menuentry 'one' --id first {", "  linux /k1 a=b", "  initrd /i1", "}",
        "menuentry 'two' --id second {", "  linux /k2", "  initrd /i2", "}",
    ])  # fmt: skip
    assert client.parse_grub_menu(text) == ("/k2", "/i2")
    with pytest.raises(ValueError):
        client.parse_grub_menu("menuentry 'local' --id local {\n  exit\n}\n")
    with pytest.raises(ValueError):
        client.grub_url("(tftp,10.20.17.254)/vmlinuz", "http://10.20.17.254")
