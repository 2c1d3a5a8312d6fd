"""Menus synthesised per MAC: profiles, instances, kernel scanning, the seed's APPEND shape."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from sidus_appliance.boot.kernels import kernel_versions
from sidus_appliance.boot.pxelinux import render_menu
from sidus_appliance.config import DEFAULT_NFS_OPTIONS, parse_config

MASTER = "08:00:aa:bb:cc:dd"


def make_config(tmp_path: Path, instances: list[dict] | None = None, **extra: object):
    data = {
        "interface": "eth1",
        "address": "10.20.17.254/24",
        "domain": "sidus.zone",
        "hosts": [{"name": "master", "mac": MASTER, "address": "10.20.17.253", "profile": "master"}],
        "tftp": {"root": str(tmp_path / "tftp")},
        "instances": instances or [],
        **extra,
    }
    data["nfs"] = {"instances_dir": str(tmp_path / "nfsroot"), **data.get("nfs", {})}
    return parse_config(yaml.safe_dump(data))


def make_root(tmp_path: Path, name: str, versions: list[str], initrd: bool = True) -> Path:
    root = tmp_path / "nfsroot" / name
    (root / "boot").mkdir(parents=True)
    for v in versions:
        (root / "boot" / f"vmlinuz-{v}").write_bytes(b"kernel " + v.encode())
        if initrd:
            (root / "boot" / f"initrd.img-{v}").write_bytes(b"initrd " + v.encode())
    return root


def entries(menu: str) -> list[dict[str, str]]:
    out: list[dict[str, str]] = []
    for line in menu.splitlines():
        line = line.strip()
        if line.startswith("LABEL "):
            out.append({"label": line[6:]})
        elif out and " " in line:
            key, _, value = line.partition(" ")
            out[-1][key] = value
    return out


def test_kernel_versions_newest_first_and_need_an_initrd(tmp_path):
    root = make_root(tmp_path, "a", ["6.1.0-9-amd64", "6.1.0-18-amd64", "5.10.0-28-amd64"])
    (root / "boot" / "vmlinuz-6.2.0-1-amd64").write_bytes(b"no initrd")
    assert kernel_versions(root) == ["6.1.0-18-amd64", "6.1.0-9-amd64", "5.10.0-28-amd64"]
    assert kernel_versions(tmp_path / "missing") == []


def test_default_menu_one_entry_per_instance_and_mode_overlay_first(tmp_path):
    make_root(tmp_path, "bookworm", ["6.1.0-18-amd64"])
    make_root(tmp_path, "trixie", ["6.12.0-1-amd64"])
    config = make_config(tmp_path, [
        {"name": "bookworm", "label": "Debian 12", "modes": ["aufs", "overlay"], "append": "quiet"},
        {"name": "trixie", "root": str(tmp_path / "nfsroot" / "trixie")},
    ])
    menu = render_menu(config, None)
    got = entries(menu)
    assert [e["label"] for e in got] == ["bookworm-overlay", "bookworm-aufs", "trixie-overlay", "local"]
    assert "DEFAULT bookworm-overlay" in menu
    root = tmp_path / "nfsroot" / "bookworm"
    assert got[0]["KERNEL"] == "vmlinuz-6.1.0-18-amd64@bookworm"
    assert got[0]["APPEND"] == (
        f"initrd=initrd.img-6.1.0-18-amd64@bookworm sidus=overlay ip=dhcp "
        f"root=nfs:10.20.17.254:{root}:{DEFAULT_NFS_OPTIONS} net.ifnames=0 quiet"
    )
    assert "sidus=aufs" in got[1]["APPEND"]
    assert got[2]["KERNEL"] == "vmlinuz-6.12.0-1-amd64@trixie"


def test_master_profile_boots_read_write(tmp_path):
    make_root(tmp_path, "bookworm", ["6.1.0-18-amd64"])
    config = make_config(tmp_path, [{"name": "bookworm", "modes": ["overlay", "aufs"]}])
    menu = render_menu(config, MASTER.replace(":", "-").upper())  # any MAC spelling
    got = entries(menu)
    assert [e["label"] for e in got] == ["bookworm-rw", "local"]
    append = got[0]["APPEND"]
    assert "sidus=" not in append
    assert f":{DEFAULT_NFS_OPTIONS},rw " in append
    assert "profile master" in menu and MASTER in menu


def test_unknown_mac_gets_the_default_profile(tmp_path):
    make_root(tmp_path, "bookworm", ["6.1.0-18-amd64"])
    config = make_config(tmp_path, [{"name": "bookworm"}])
    assert entries(render_menu(config, "52:54:00:12:34:56")) == entries(render_menu(config, None))


def test_no_instances_menu_says_so_and_boots_locally(tmp_path):
    menu = render_menu(make_config(tmp_path), None)
    assert "No instance configured" in menu
    assert "DEFAULT local" in menu and "LOCALBOOT" in menu


def test_instance_without_kernel_is_noted_not_fatal(tmp_path):
    (tmp_path / "nfsroot" / "empty").mkdir(parents=True)
    make_root(tmp_path, "ok", ["6.1.0-18-amd64"])
    config = make_config(tmp_path, [{"name": "empty"}, {"name": "ok"}])
    menu = render_menu(config, None)
    assert "# instance empty: no vmlinuz" in menu
    assert [e["label"] for e in entries(menu)] == ["ok-overlay", "local"]


def test_nfs_options_and_kernel_args_from_config(tmp_path):
    make_root(tmp_path, "bookworm", ["6.1.0-18-amd64"])
    config = make_config(tmp_path, [{"name": "bookworm"}], nfs={"options": "vers=4.2,ro"}, kernel_args="console=ttyS0")
    append = entries(render_menu(config, None))[0]["APPEND"]
    assert append.endswith(":vers=4.2,ro console=ttyS0")


def test_malformed_mac_is_an_error(tmp_path):
    with pytest.raises(ValueError):
        render_menu(make_config(tmp_path), "not-a-mac")


# ---------------------------------------------------------------- the same entries for every loader


def grub_entries(text: str) -> list[dict[str, str]]:
    out: list[dict[str, str]] = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("menuentry "):
            out.append({"id": line.split(" --id ", 1)[1].split()[0]})
        elif out and line.startswith(("linux ", "initrd ")):
            key, _, value = line.partition(" ")
            out[-1][key] = value
    return out


def test_grub_and_ipxe_menus_hold_the_pxelinux_entries(tmp_path):
    from sidus_appliance.boot import grub, ipxe
    from sidus_appliance.boot.menus import menu_for

    make_root(tmp_path, "bookworm", ["6.1.0-18-amd64"])
    config = make_config(tmp_path, [{"name": "bookworm", "label": "Debian's 12 $x", "modes": ["overlay", "aufs"]}])
    for mac in (None, MASTER):
        pxe = [e for e in entries(render_menu(config, mac)) if e["label"] != "local"]
        menu = menu_for(config, mac)
        in_grub = grub_entries(grub.render(menu))
        assert [e["id"] for e in in_grub] == [e["label"] for e in pxe] + ["local"]
        for p, g in zip(pxe, in_grub, strict=False):
            assert g["linux"] == f"/{p['KERNEL']} {p['APPEND']}"  # byte for byte the same command line
            assert g["initrd"] == "/" + p["APPEND"].split()[0].removeprefix("initrd=")
        script = ipxe.render(menu)
        assert script.startswith("#!ipxe\n")
        for p in pxe:
            assert f"kernel /{p['KERNEL']} {p['APPEND']}\n" in script and f":{p['label']}\n" in script
    # A label with a quote and a dollar cannot break out of GRUB's quoting.
    text = grub.render(menu_for(config, None))
    assert "menuentry 'Debian'\\''s 12 $x (shared root" in text
    over_http = grub.render(menu_for(config, None), "(http,10.20.17.254)")
    assert "linux (http,10.20.17.254)/vmlinuz-6.1.0-18-amd64@bookworm " in over_http


def test_the_tree_serves_grub_and_ipxe_menus_by_mac(tmp_path):
    from sidus_appliance.tftp.tree import BootTree, TreeError

    make_root(tmp_path, "bookworm", ["6.1.0-18-amd64"])
    (tmp_path / "tftp").mkdir()
    config = make_config(tmp_path, [{"name": "bookworm"}])
    tree = BootTree(config)

    def text(name: str) -> str:
        resolved = tree.resolve(name)
        return resolved.read(0, resolved.size).decode()

    assert "configfile $prefix/grub.cfg-$net_default_mac" in text("/grub/grub.cfg")
    # Asked by a known address (the master's reservation): that machine's own menu at once.
    master_cfg = tree.resolve("/grub/grub.cfg", client="10.20.17.253")
    assert "MASTER, read-write" in master_cfg.read(0, master_cfg.size).decode()
    for unknown in ("10.20.17.99", "fe80::1", "?"):
        generic = tree.resolve("/grub/grub.cfg", client=unknown)
        assert "$net_default_mac" in generic.read(0, generic.size).decode()
    assert "MASTER, read-write" in text("/grub/grub.cfg-08:00:aa:bb:cc:dd")
    assert "sidus=overlay" in text("grub/grub.cfg-default") and "MASTER" not in text("grub/grub.cfg-default")
    assert "MASTER, read-write" in text("ipxe/01-08-00-aa-bb-cc-dd")
    for missing in ("grub/grub.cfg-zz", "grub/x86_64-efi/command.lst", "ipxe/01-nonsense", "ipxe/boot"):
        with pytest.raises(TreeError):
            tree.resolve(missing)
