"""Stage the boot loaders TFTP serves, from Debian's packages (nothing binary lives in the repo).

`bootfiles/manifest` says which file of which package goes where under tftp.root. Staging is
idempotent (a file is rewritten only when its content differs, atomically by rename) and
records what it staged, with package versions, in `<root>/.sidus-bootfiles.json`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from sidus_appliance.config import Config
from sidus_appliance.resources import BOOTFILES_MANIFEST, data_path

MANIFEST = data_path(*BOOTFILES_MANIFEST)
RECORD = ".sidus-bootfiles.json"


@dataclass(frozen=True)
class Entry:
    dest: str
    package: str
    source: Path
    optional: bool = False


@dataclass
class Report:
    root: Path
    staged: list[str] = field(default_factory=list)  # written (new or changed)
    unchanged: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # required sources absent: one line each
    skipped: list[str] = field(default_factory=list)  # optional sources absent
    stale: list[str] = field(default_factory=list)  # status(): staged copy differs from source
    versions: dict[str, str] = field(default_factory=dict)  # package → version

    @property
    def ok(self) -> bool:
        return not self.missing and not self.stale

    def packages_to_install(self) -> list[str]:
        return sorted({line.split("apt-get install ", 1)[1].rstrip(")") for line in self.missing})

    def __str__(self) -> str:
        lines = [f"boot files in {self.root}:"]
        for title, names in (("staged", self.staged), ("unchanged", self.unchanged), ("stale", self.stale),
                             ("skipped (optional)", self.skipped)):
            if names:
                lines.append(f"  {title}: {len(names)}: {' '.join(names)}")
        lines += [f"  MISSING {line}" for line in self.missing]
        if self.versions:
            lines.append("  packages: " + ", ".join(f"{p} {v}" for p, v in sorted(self.versions.items())))
        if self.missing:
            lines.append(f"  fix: apt-get install {' '.join(self.packages_to_install())}")
        return "\n".join(lines)


def load_manifest(path: Path = MANIFEST) -> list[Entry]:
    entries = []
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].split()
        if not line:
            continue
        if len(line) not in (3, 4) or (len(line) == 4 and line[3] != "optional"):
            raise ValueError(f"{path}:{number}: expected '<dest> <package> <source> [optional]'")
        dest = line[0]
        if dest.startswith("/") or ".." in dest.split("/"):
            raise ValueError(f"{path}:{number}: {dest!r} must be a path inside the TFTP root")
        entries.append(Entry(dest, line[1], Path(line[2]), len(line) == 4))
    return entries


def package_version(package: str) -> str:
    try:
        out = subprocess.run(["dpkg-query", "-W", "-f=${Version}", package], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _same(a: Path, b: Path) -> bool:
    try:
        return a.stat().st_size == b.stat().st_size and _digest(a) == _digest(b)
    except OSError:
        return False


def _missing_line(entry: Entry) -> str:
    return f"{entry.dest}: {entry.source} not found (apt-get install {entry.package})"


def install(config: Config, manifest: Path = MANIFEST) -> Report:
    """Copy every manifest file whose source exists into tftp.root; say what is missing."""
    root = Path(config.tftp.root)
    report = Report(root)
    record: dict[str, dict[str, object]] = {}
    versions: dict[str, str] = {}
    for entry in load_manifest(manifest):
        if not entry.source.is_file():
            (report.skipped if entry.optional else report.missing).append(
                entry.dest if entry.optional else _missing_line(entry))
            continue
        target = root / entry.dest
        if _same(entry.source, target):
            report.unchanged.append(entry.dest)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            temporary = target.with_name(f".{target.name}.tmp{os.getpid()}")
            shutil.copyfile(entry.source, temporary)
            os.chmod(temporary, 0o644)
            os.replace(temporary, target)  # a client mid-transfer keeps the old inode
            report.staged.append(entry.dest)
        if entry.package not in versions:
            versions[entry.package] = package_version(entry.package)
        record[entry.dest] = {
            "package": entry.package, "version": versions[entry.package], "source": str(entry.source),
            "sha256": _digest(target), "size": target.stat().st_size,
        }
    report.versions = versions
    root.mkdir(parents=True, exist_ok=True)
    (root / RECORD).write_text(json.dumps({
        "staged_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "files": record,
    }, indent=2, sort_keys=True) + "\n")
    return report


def status(config: Config, manifest: Path = MANIFEST) -> Report:
    """Compare tftp.root with the manifest without writing: missing, stale or up to date."""
    root = Path(config.tftp.root)
    report = Report(root)
    try:
        recorded = json.loads((root / RECORD).read_text()).get("files", {})
    except (OSError, ValueError):
        recorded = {}
    for entry in load_manifest(manifest):
        target = root / entry.dest
        if not target.is_file():
            if entry.optional:
                report.skipped.append(entry.dest)
            else:
                report.missing.append(f"{entry.dest}: not staged (sidus-appliance bootfiles install; "
                                      f"apt-get install {entry.package})")
        elif entry.source.is_file() and not _same(entry.source, target):
            report.stale.append(entry.dest)
        else:
            report.unchanged.append(entry.dest)
        version = recorded.get(entry.dest, {}).get("version")
        if version and target.is_file():
            report.versions[entry.package] = version
    return report
