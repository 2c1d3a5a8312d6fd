"""The exports model and its two renderings (kernel exports(5), nfs-ganesha), byte for byte."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from sidus_appliance import nfs
from sidus_appliance.config import parse_config
from sidus_appliance.nfs import ganesha, kernel

BASE = """
interface: eth1
address: 10.20.17.254/24
domain: sidus.zone
state_dir: {state}
hosts:
  - {{name: master, mac: "08:00:aa:bb:cc:dd", address: 10.20.17.253, profile: master}}
  - {{name: node1, mac: "08:00:aa:bb:cc:01", address: 10.20.17.5}}
instances:
  - {{name: bookworm}}
  - {{name: trixie, root: /srv/other/trixie}}
nfs:
  export_root: {export}
  home: {export}/home
  exports_file: {state}/sidus.exports
  ganesha_config: {state}/ganesha.conf
"""


def make_config(tmp_path: Path | None = None, export: str = "/export", state: str = "/var/lib/sidus-appliance"):
    if tmp_path is not None:
        state = str(tmp_path / "state")
    return parse_config(BASE.format(export=export, state=state), "test.yaml")


def test_model_roles_and_clients() -> None:
    model = nfs.exports(make_config())
    assert [(e.role, str(e.path)) for e in model] == [
        ("root", "/export"),
        ("home", "/export/home"),
        ("instance", "/srv/nfsroot/bookworm"),
        ("instance", "/srv/other/trixie"),
    ]
    inst = model[2]
    assert [c.who for c in inst.clients] == ["10.20.17.253", "10.20.17.0/24"]  # master first
    assert inst.clients[0].writable and not inst.clients[0].squash_root
    assert not inst.clients[1].writable
    assert model[0].pseudo == "/" and model[1].pseudo == "/home" and inst.pseudo is None


def test_kernel_rendering_exact_lines() -> None:
    text = nfs.render_kernel(make_config())
    assert text.splitlines() == [
        "# Managed by sidus-appliance from test.yaml: edits here are overwritten by `exports apply`.",
        "/export 10.20.17.0/24(rw,fsid=0,no_subtree_check,sync)",
        "/export/home 10.20.17.0/24(rw,nohide,no_subtree_check,sync)",
        "/srv/nfsroot/bookworm 10.20.17.253(rw,no_root_squash,no_subtree_check,sync)"
        " 10.20.17.0/24(ro,no_root_squash,no_subtree_check,async)",
        "/srv/other/trixie 10.20.17.253(rw,no_root_squash,no_subtree_check,sync)"
        " 10.20.17.0/24(ro,no_root_squash,no_subtree_check,async)",
    ]
    assert nfs.render(make_config()) == text


def test_no_master_means_read_only_for_everyone() -> None:
    config = make_config()
    config = config.with_overrides(hosts=tuple(h for h in config.hosts if h.profile != "master"))
    line = nfs.render_kernel(config).splitlines()[3]
    assert line == "/srv/nfsroot/bookworm 10.20.17.0/24(ro,no_root_squash,no_subtree_check,async)"


def test_paths_with_spaces_are_quoted() -> None:
    text = nfs.render_kernel(make_config(export="/srv/my export"))
    assert '"/srv/my export" 10.20.17.0/24(rw,fsid=0,no_subtree_check,sync)' in text


def test_ganesha_rendering() -> None:
    config = make_config()
    text = nfs.render_ganesha(config)
    assert "Enable_NLM = false;" in text
    assert 'RecoveryRoot = "/var/lib/sidus-appliance/ganesha/recovery";' in text
    blocks = text.split("EXPORT {")[1:]
    assert len(blocks) == 4
    root, home, bookworm, _ = blocks
    assert "Export_Id = 1;" in root and 'Path = "/export";' in root and 'Pseudo = "/";' in root
    assert "Clients = 10.20.17.0/24; Access_Type = RW; Squash = root_squash;" in root
    assert "Export_Id = 2;" in home and 'Pseudo = "/home";' in home
    assert "Pseudo" not in bookworm and "Protocols = 3;" in bookworm
    master = bookworm.index("Clients = 10.20.17.253; Access_Type = RW; Squash = no_root_squash;")
    subnet = bookworm.index("Clients = 10.20.17.0/24; Access_Type = RO; Squash = no_root_squash;")
    assert master < subnet  # ganesha takes the first matching CLIENT block
    ids = [int(b.split("Export_Id = ")[1].split(";")[0]) for b in blocks]
    assert len(set(ids)) == 4
    assert nfs.render(config, "ganesha") == text


def test_export_ids_are_stable_across_reordering() -> None:
    config = make_config()
    flipped = config.with_overrides(instances=tuple(reversed(config.instances)))
    ids = {str(e.path): ganesha.export_id(e) for e in nfs.exports(config)}
    assert ids == {str(e.path): ganesha.export_id(e) for e in nfs.exports(flipped)}


def test_unknown_backend() -> None:
    with pytest.raises(nfs.NfsError):
        nfs.render(make_config(), "zfs")


def test_config_field_for_ganesha() -> None:
    config = parse_config(BASE.format(export="/export", state="/tmp/s") + "  backend: ganesha\n", "x.yaml")
    assert config.nfs.backend == "ganesha"
    assert config.nfs.ganesha_config == Path("/tmp/s/ganesha.conf")


def test_apply_kernel_writes_only_the_managed_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    export = tmp_path / "export"
    config = make_config(tmp_path, export=str(export))
    config = config.with_overrides(instances=(
        config.instances[0].__class__("built", tmp_path / "built"),
        config.instances[0].__class__("notyet", tmp_path / "notyet"),
    ))
    (tmp_path / "built").mkdir()
    other = tmp_path / "exports"
    other.write_text("/data *(ro)\n")
    calls: list[list[str]] = []

    def fake_run(argv, netns=None, timeout=30):
        calls.append(list(argv))
        return subprocess.CompletedProcess(argv, 0, "", "")

    monkeypatch.setattr(kernel, "_run", fake_run)
    monkeypatch.setattr(shutil, "which", lambda name: f"/usr/sbin/{name}")
    messages: list[str] = []
    nfs.apply(config, messages.append)
    written = config.nfs.exports_file.read_text()
    assert f"{tmp_path}/built 10.20.17.253(" in written
    assert "notyet" not in written
    assert any("notyet" in m and "image build notyet" in m for m in messages)
    assert (export / "home").is_dir()
    assert calls == [["exportfs", "-ra"]]
    assert other.read_text() == "/data *(ro)\n"


def test_apply_kernel_reports_exportfs_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = make_config(tmp_path, export=str(tmp_path / "export"))
    monkeypatch.setattr(shutil, "which", lambda name: f"/usr/sbin/{name}")
    monkeypatch.setattr(
        kernel, "_run", lambda argv, netns=None, timeout=30: subprocess.CompletedProcess(
            argv, 1, "", "exportfs: /export/home does not support NFS export\n"
        ),
    )
    with pytest.raises(nfs.NfsError, match="does not support NFS export"):
        nfs.apply(config, lambda m: None)


def test_apply_kernel_without_exportfs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(nfs.NfsError, match="nfs-kernel-server"):
        nfs.apply(make_config(tmp_path, export=str(tmp_path / "e")), lambda m: None)


def test_parse_etab_and_showmount() -> None:
    etab = (
        "/export\t10.20.17.0/24(rw,sync,wdelay,hide,nocrossmnt,secure,root_squash,fsid=0)\n"
        "/srv/nfsroot/bookworm\t10.20.17.253(rw,sync,no_root_squash)\n"
    )
    assert kernel.parse_etab(etab) == {("/export", "10.20.17.0/24"), ("/srv/nfsroot/bookworm", "10.20.17.253")}
    shown = "Export list for 127.0.0.1:\n/srv/nfsroot/bookworm 10.20.17.253/32,10.20.17.0/24\n/export 10.20.17.0/24\n"
    assert ganesha.parse_showmount(shown) == {
        "/srv/nfsroot/bookworm": {"10.20.17.253/32", "10.20.17.0/24"},
        "/export": {"10.20.17.0/24"},
    }


def test_check_kernel_compares_etab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    export = tmp_path / "export"
    (export / "home").mkdir(parents=True)
    config = make_config(tmp_path, export=str(export)).with_overrides(instances=())
    config.nfs.exports_file.parent.mkdir(parents=True)
    config.nfs.exports_file.write_text("x")
    monkeypatch.setattr(shutil, "which", lambda name: f"/usr/sbin/{name}")
    monkeypatch.setattr(kernel, "_rpc_programs", lambda netns, host="127.0.0.1": {100000, 100003, 100005})
    etab = tmp_path / "etab"
    etab.write_text(f"{export}\t10.20.17.0/24(rw)\n")
    problems = nfs.check(config, etab=etab)
    assert problems == [f"{export}/home is not exported to 10.20.17.0/24 (run `sidus-appliance exports apply`)"]
