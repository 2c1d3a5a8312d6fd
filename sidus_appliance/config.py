"""Typed, validated, immutable configuration: the only place YAML is read.

Every error names the key path (``dhcp.pool.start``) and, where the YAML gives it, the
file and line, so an administrator can fix a config without reading our source.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address, IPv4Interface, IPv4Network, ip_address
from pathlib import Path
from typing import Any

import yaml

from sidus_appliance.boot.kernels import SEPARATOR
from sidus_appliance.boot.loaders import DEFAULT_BOOT_FILE, DEFAULT_BOOT_FILES
from sidus_appliance.boot.model import BootMode, Profile, Transfer

INFINITE_LEASE = 0xFFFFFFFF

# Seed's NFS mount options for the shared root (overlay mode); the master adds `rw`.
DEFAULT_NFS_OPTIONS = "vers=3,rsize=1048576,wsize=1048576,tcp,nolock,noatime,nocto,actimeo=1,intr,hard"

_MAC_RE = re.compile(r"^[0-9a-f]{2}([:-])[0-9a-f]{2}(\1[0-9a-f]{2}){4}$")
_LABEL_RE = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


class ConfigError(Exception):
    """A config problem, already phrased for the administrator (key path, file:line)."""


def normalize_mac(value: str) -> str:
    """`08-00-AA-BB-CC-DD` → `08:00:aa:bb:cc:dd`; raises ValueError if not a MAC."""
    text = str(value).strip().lower()
    if not _MAC_RE.match(text):
        raise ValueError(f"{value!r} is not a MAC address (expected six hex pairs like 08:00:aa:bb:cc:dd)")
    return text.replace("-", ":")


@dataclass(frozen=True)
class Host:
    """A reservation: fixed address and name, and the boot-menu profile it gets."""

    name: str
    mac: str
    address: IPv4Address
    profile: Profile = Profile.DEFAULT
    # Loaders for this machine by arch, over dhcp.boot_files (e.g. {7: efi64/shimx64.efi}).
    boot_files: Mapping[int, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Pool:
    start: IPv4Address
    end: IPv4Address
    hostname: str = "dhcp-{octet}"

    def __contains__(self, address: object) -> bool:
        return isinstance(address, IPv4Address) and self.start <= address <= self.end

    def addresses(self) -> list[IPv4Address]:
        return [IPv4Address(n) for n in range(int(self.start), int(self.end) + 1)]

    def name_for(self, address: IPv4Address) -> str:
        octets = str(address).split(".")
        return self.hostname.format(octet=octets[3], ip=str(address).replace(".", "-"))


@dataclass(frozen=True)
class DhcpConfig:
    enabled: bool = True
    port: int = 67
    pool: Pool | None = None
    lease_time: int = INFINITE_LEASE
    boot_files: Mapping[int, str] = field(default_factory=lambda: dict(DEFAULT_BOOT_FILES))
    default_boot_file: str = DEFAULT_BOOT_FILE
    # iPXE waits ~13 s for a proxyDHCP offer unless told `no-pxedhcp` (option 175.176).
    ipxe_no_pxedhcp: bool = True
    # iPXE waits ~20 s for an IPv6 router unless one answers its Router Solicitation: answer
    # with a bare RA (lifetime 0: not a default router, no prefixes), only when solicited.
    ipv6_ra_quench: bool = True
    # An ACK leaves only once its journal record is fsynced (group commit per burst); off, a
    # SIGKILL still loses nothing but a power cut may lose the last acknowledged leases.
    fsync: bool = True
    # Addresses one MAC may hold in DECLINE quarantine at once; more DECLINEs are ignored.
    max_quarantine_per_client: int = 2


@dataclass(frozen=True)
class DnsRecord:
    name: str  # relative to the domain, or absolute with a trailing dot
    type: str  # A, CNAME, MX, TXT, SRV
    value: str
    ttl: int | None = None


@dataclass(frozen=True)
class DnsConfig:
    enabled: bool = True
    port: int = 53
    listen: tuple[IPv4Address, ...] = ()  # empty: the appliance address and 127.0.0.1
    ttl: int = 3600
    # (address, port) from the YAML key `upstream` ("ip" or "ip:port"); empty: no forwarding at all
    upstreams: tuple[tuple[str, int], ...] = ()
    recursion_allowed: tuple[IPv4Network, ...] = ()  # empty: the lab subnet only
    transfer_allowed: tuple[IPv4Network, ...] = ()  # AXFR; empty: nobody
    # Secondaries told of each new serial (RFC 1996 NOTIFY), as (address, port). Absent from the
    # YAML: every single-host (/32) network of transfer_allowed, port 53.
    notify: tuple[tuple[str, int], ...] = ()
    forward_timeout: float = 2.0
    records: tuple[DnsRecord, ...] = ()
    tcp_max_connections: int = 128  # TCP clients at once, all sources together
    tcp_max_per_client: int = 8  # TCP connections one source address may hold
    tcp_idle_timeout: float = 10.0  # seconds a TCP client may stay silent or take to send a query


@dataclass(frozen=True)
class TftpConfig:
    enabled: bool = True
    port: int = 69
    root: Path = Path("/srv/tftp")
    max_blksize: int = 0  # 0: the interface MTU minus IP/UDP/TFTP headers
    max_windowsize: int = 64
    max_transfers: int = 1000
    max_transfers_per_client: int = 8  # transfers one client address may run at once
    timeout: float = 1.0  # first retransmission; doubles per retry
    retries: int = 5


@dataclass(frozen=True)
class HttpConfig:
    """Boot files over HTTP (UEFI HTTP boot, iPXE, GRUB): the same tree and rules as TFTP."""

    enabled: bool = True
    port: int = 80
    transfer: Transfer = Transfer.TFTP  # how iPXE and GRUB fetch kernels and initrds
    max_connections_per_client: int = 8  # connections one address may hold at once
    max_connections: int = 512  # HTTP connections at once, all clients together
    idle_timeout: float = 15.0  # seconds a kept-alive connection may stay silent


@dataclass(frozen=True)
class ManagementConfig:
    """The management page, its JSON/SSE API and /metrics: for the administrator, not the classroom."""

    enabled: bool = True
    host: str = "127.0.0.1"  # from `listen`; loopback unless the administrator opens it
    port: int = 8067
    token: str | None = field(default=None, repr=False)  # every request must carry it when set
    stuck_after: float = 120.0  # seconds without progress before a boot counts as stuck

    @property
    def listen(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        """Where a local client reaches it (a wildcard address answers on loopback too)."""
        host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(self.host, self.host)
        return f"http://[{host}]:{self.port}" if ":" in host else f"http://{host}:{self.port}"


@dataclass(frozen=True)
class Instance:
    """A shared Debian root, exported over NFS and booted by every machine."""

    name: str
    root: Path
    label: str = ""
    append: str = ""  # extra kernel command line
    modes: tuple[BootMode, ...] = (BootMode.OVERLAY,)


@dataclass(frozen=True)
class NfsConfig:
    backend: str = "kernel"  # kernel (exportfs) or ganesha
    export_root: Path = Path("/export")
    home: Path = Path("/export/home")
    instances_dir: Path = Path("/srv/nfsroot")
    options: str = DEFAULT_NFS_OPTIONS
    exports_file: Path = Path("/etc/exports.d/sidus.exports")
    ganesha_config: Path = Path("/etc/ganesha/sidus.conf")  # backend ganesha: the file we own


@dataclass(frozen=True)
class Config:
    interface: str
    address: IPv4Interface
    subnet: IPv4Network
    gateway: IPv4Address
    dns_servers: tuple[IPv4Address, ...]
    domain: str
    state_dir: Path = Path("/var/lib/sidus-appliance")
    user: str | None = None
    dhcp: DhcpConfig = field(default_factory=DhcpConfig)
    dns: DnsConfig = field(default_factory=DnsConfig)
    tftp: TftpConfig = field(default_factory=TftpConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    nfs: NfsConfig = field(default_factory=NfsConfig)
    management: ManagementConfig = field(default_factory=ManagementConfig)
    hosts: tuple[Host, ...] = ()
    instances: tuple[Instance, ...] = ()
    kernel_args: str = "net.ifnames=0"
    source: str = "<config>"
    # Lines of the keys in `source`, so checks made after parsing (check_paths) can say where.
    marks: _Marks | None = field(default=None, compare=False, repr=False)

    @property
    def server_ip(self) -> IPv4Address:
        return self.address.ip

    @property
    def reverse_zone(self) -> str:
        """`10.20.17.0/24` → `17.20.10.in-addr.arpa` (octet-aligned prefixes only)."""
        octets = str(self.subnet.network_address).split(".")[: self.subnet.prefixlen // 8]
        return ".".join(reversed(octets)) + ".in-addr.arpa"

    def host_by_mac(self, mac: str) -> Host | None:
        return next((h for h in self.hosts if h.mac == mac), None)

    def with_overrides(self, **changes: Any) -> Config:
        return replace(self, **changes)


# --------------------------------------------------------------------------- loading


class _Marks:
    """Line numbers of YAML nodes, by key path, for error messages."""

    def __init__(self, source: str, root: yaml.Node | None) -> None:
        self.source = source
        self.lines: dict[tuple[Any, ...], int] = {}
        if root is not None:
            self._walk(root, ())

    def _walk(self, node: yaml.Node, path: tuple[Any, ...]) -> None:
        self.lines[path] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                key = key_node.value
                self.lines[path + (key,)] = key_node.start_mark.line + 1
                self._walk_value(value_node, path + (key,))
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                self._walk(item, path + (index,))

    def _walk_value(self, node: yaml.Node, path: tuple[Any, ...]) -> None:
        line = self.lines[path]
        self._walk(node, path)
        self.lines[path] = line  # keep the key's line, the more useful one

    def where(self, path: tuple[Any, ...]) -> str:
        for cut in range(len(path), -1, -1):
            line = self.lines.get(path[:cut])
            if line is not None:
                return f"{self.source}:{line}"
        return self.source


def _dotted(path: tuple[Any, ...]) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


class _Reader:
    """Walks the parsed YAML with typed accessors that raise ConfigError naming the key."""

    def __init__(self, marks: _Marks) -> None:
        self.marks = marks

    def fail(self, path: tuple[Any, ...], message: str) -> ConfigError:
        return ConfigError(f"{self.marks.where(path)}: {_dotted(path)}: {message}")

    def mapping(self, value: Any, path: tuple[Any, ...], allowed: set[str]) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.fail(path, f"expected a mapping, got {type(value).__name__}")
        for key in value:
            if key not in allowed:
                known = ", ".join(sorted(allowed))
                raise self.fail(path + (key,), f"unknown key (known keys here: {known})")
        return value

    def required(self, data: dict[str, Any], key: str, path: tuple[Any, ...]) -> Any:
        if data.get(key) is None:
            raise self.fail(path + (key,), "is required")
        return data[key]

    def convert(self, value: Any, path: tuple[Any, ...], kind: Any, what: str) -> Any:
        try:
            return kind(value)
        except (ValueError, TypeError) as exc:
            raise self.fail(path, f"{value!r} is not {what} ({exc})") from None

    def ip(self, value: Any, path: tuple[Any, ...]) -> IPv4Address:
        return self.convert(str(value), path, IPv4Address, "an IPv4 address")

    def integer(self, value: Any, path: tuple[Any, ...], low: int, high: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(path, f"{value!r} is not a whole number")
        if not low <= value <= high:
            raise self.fail(path, f"{value} is out of range ({low}..{high})")
        return value

    def number(self, value: Any, path: tuple[Any, ...], low: float, high: float) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.fail(path, f"{value!r} is not a number")
        if not low <= value <= high:
            raise self.fail(path, f"{value} is out of range ({low}..{high})")
        return float(value)

    def boolean(self, value: Any, path: tuple[Any, ...]) -> bool:
        if not isinstance(value, bool):
            raise self.fail(path, f"{value!r} is not true or false")
        return value

    def text(self, value: Any, path: tuple[Any, ...]) -> str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise self.fail(path, f"{value!r} is not a string")
        return str(value)

    def sequence(self, value: Any, path: tuple[Any, ...]) -> list[Any]:
        if value is None:
            return []
        if not isinstance(value, list):
            raise self.fail(path, f"expected a list, got {type(value).__name__}")
        return value

    def networks(self, value: Any, path: tuple[Any, ...]) -> tuple[IPv4Network, ...]:
        return tuple(
            self.convert(str(item), path + (i,), lambda s: IPv4Network(s, strict=False), "an IPv4 network")
            for i, item in enumerate(self.sequence(value, path))
        )


def load_config(path: str | Path) -> Config:
    """Read and validate a config file; raises ConfigError with file:line and key path."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror}") from None
    return parse_config(text, str(path))


def parse_config(text: str, source: str = "<config>") -> Config:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark else source
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{where}: invalid YAML: {problem}") from None
    reader = _Reader(_Marks(source, node))
    return _build(reader, data, source)


_TOP_KEYS = {
    "interface",
    "address",
    "subnet",
    "gateway",
    "dns_servers",
    "domain",
    "state_dir",
    "user",
    "dhcp",
    "dns",
    "tftp",
    "http",
    "nfs",
    "management",
    "hosts",
    "instances",
    "kernel_args",
}


def _build(r: _Reader, data: Any, source: str) -> Config:
    top = r.mapping(data, (), _TOP_KEYS)
    if not top:
        raise ConfigError(f"{source}: the config is empty")
    interface = r.text(r.required(top, "interface", ()), ("interface",))
    address = r.convert(
        str(r.required(top, "address", ())), ("address",), IPv4Interface, "an address with prefix like 10.20.17.254/24"
    )
    if address.network.prefixlen == 32:
        raise r.fail(("address",), "needs a prefix length, like 10.20.17.254/24")
    subnet = address.network
    if top.get("subnet") is not None:
        subnet = r.convert(str(top["subnet"]), ("subnet",), IPv4Network, "an IPv4 network like 10.20.17.0/24")
        if address.ip not in subnet:
            raise r.fail(("address",), f"{address.ip} is not inside subnet {subnet}")
    gateway = r.ip(top.get("gateway", address.ip), ("gateway",))
    if gateway not in subnet or gateway in (subnet.network_address, subnet.broadcast_address):
        raise r.fail(("gateway",), f"{gateway} is outside the subnet {subnet} (clients could not reach it)")
    dns_servers = tuple(
        r.ip(v, ("dns_servers", i)) for i, v in enumerate(r.sequence(top.get("dns_servers"), ("dns_servers",)))
    )
    domain = r.text(r.required(top, "domain", ()), ("domain",)).strip(".").lower()
    for label in domain.split("."):
        if not _LABEL_RE.match(label):
            raise r.fail(("domain",), f"{domain!r} is not a valid DNS domain")
    state_dir = Path(r.text(top.get("state_dir", "/var/lib/sidus-appliance"), ("state_dir",)))
    user = top.get("user")
    if user is not None:
        user = r.text(user, ("user",))
    dhcp = _build_dhcp(r, top.get("dhcp"), subnet)
    hosts = _build_hosts(r, top.get("hosts"), subnet, dhcp.pool, address.ip)
    nfs = _build_nfs(r, top.get("nfs"))
    http = _build_http(r, top.get("http"))
    config = Config(
        interface=interface,
        address=address,
        subnet=subnet,
        gateway=gateway,
        dns_servers=dns_servers or (address.ip,),
        domain=domain,
        state_dir=state_dir,
        user=user,
        dhcp=dhcp,
        dns=_build_dns(r, top.get("dns"), subnet),
        tftp=_build_tftp(r, top.get("tftp")),
        http=http,
        nfs=nfs,
        management=_build_management(r, top.get("management"), address.ip, http),
        hosts=hosts,
        instances=_build_instances(r, top.get("instances"), nfs),
        kernel_args=r.text(top.get("kernel_args", "net.ifnames=0"), ("kernel_args",)),
        source=source,
        marks=r.marks,
    )
    return config


def _build_dhcp(r: _Reader, value: Any, subnet: IPv4Network) -> DhcpConfig:
    p = ("dhcp",)
    d = r.mapping(
        value,
        p,
        {"enabled", "port", "pool", "lease_time", "boot_files", "default_boot_file"}
        | {"ipxe_no_pxedhcp", "ipv6_ra_quench", "fsync", "max_quarantine_per_client"},
    )
    pool = None
    if d.get("pool") is not None:
        pp = p + ("pool",)
        pd = r.mapping(d["pool"], pp, {"start", "end", "hostname"})
        start = r.ip(r.required(pd, "start", pp), pp + ("start",))
        end = r.ip(r.required(pd, "end", pp), pp + ("end",))
        for key, ip in (("start", start), ("end", end)):
            if ip not in subnet:
                raise r.fail(pp + (key,), f"{ip} is outside the subnet {subnet}")
            if ip in (subnet.network_address, subnet.broadcast_address):
                raise r.fail(pp + (key,), f"{ip} is the subnet's network or broadcast address")
        if end < start:
            raise r.fail(pp + ("end",), f"{end} is before pool.start {start}")
        hostname = r.text(pd.get("hostname", "dhcp-{octet}"), pp + ("hostname",))
        try:
            probe = hostname.format(octet="1", ip="10-0-0-1")
        except (KeyError, IndexError, ValueError) as exc:
            raise r.fail(pp + ("hostname",), f"bad pattern ({exc}); use {{octet}} or {{ip}}") from None
        if not _LABEL_RE.match(probe):
            raise r.fail(pp + ("hostname",), f"{hostname!r} does not give valid host names")
        pool = Pool(start, end, hostname)
    lease = d.get("lease_time", "infinite")
    lease_time = INFINITE_LEASE if lease == "infinite" else r.integer(lease, p + ("lease_time",), 60, INFINITE_LEASE)
    boot_files = {**DEFAULT_BOOT_FILES, **_boot_files(r, d.get("boot_files"), p + ("boot_files",))}
    return DhcpConfig(
        enabled=r.boolean(d.get("enabled", True), p + ("enabled",)),
        port=r.integer(d.get("port", 67), p + ("port",), 1, 65535),
        pool=pool,
        lease_time=lease_time,
        boot_files=boot_files,
        default_boot_file=r.text(d.get("default_boot_file", DEFAULT_BOOT_FILE), p + ("default_boot_file",)),
        ipxe_no_pxedhcp=r.boolean(d.get("ipxe_no_pxedhcp", True), p + ("ipxe_no_pxedhcp",)),
        ipv6_ra_quench=r.boolean(d.get("ipv6_ra_quench", True), p + ("ipv6_ra_quench",)),
        fsync=r.boolean(d.get("fsync", True), p + ("fsync",)),
        max_quarantine_per_client=r.integer(
            d.get("max_quarantine_per_client", 2), p + ("max_quarantine_per_client",), 0, 1024
        ),
    )


def _boot_files(r: _Reader, value: Any, path: tuple[Any, ...]) -> dict[int, str]:
    """{arch (option 93 value): loader path in the boot tree}."""
    out: dict[int, str] = {}
    for arch, name in r.mapping(value, path, set(value or {}) if isinstance(value, dict) else set()).items():
        loader = r.text(name, path + (arch,))
        if not loader or loader.startswith("/") or ".." in loader.split("/") or SEPARATOR in loader:
            raise r.fail(path + (arch,), f"{loader!r} is not a file of the boot tree (a relative path, no '..')")
        out[r.integer(arch, path + (arch,), 0, 0xFFFF)] = loader
    return out


def _build_hosts(
    r: _Reader, value: Any, subnet: IPv4Network, pool: Pool | None, server: IPv4Address
) -> tuple[Host, ...]:
    p = ("hosts",)
    hosts: list[Host] = []
    seen_mac: dict[str, str] = {}
    seen_ip: dict[IPv4Address, str] = {}
    seen_name: set[str] = set()
    for i, item in enumerate(r.sequence(value, p)):
        hp = p + (i,)
        h = r.mapping(item, hp, {"name", "mac", "address", "profile", "boot_files"})
        name = r.text(r.required(h, "name", hp), hp + ("name",)).lower()
        if not _LABEL_RE.match(name):
            raise r.fail(hp + ("name",), f"{name!r} is not a valid host name (letters, digits, '-')")
        try:
            mac = normalize_mac(r.text(r.required(h, "mac", hp), hp + ("mac",)))
        except ValueError as exc:
            raise r.fail(hp + ("mac",), str(exc)) from None
        address = r.ip(r.required(h, "address", hp), hp + ("address",))
        if address not in subnet or address in (subnet.network_address, subnet.broadcast_address):
            raise r.fail(hp + ("address",), f"{address} is outside the subnet {subnet}")
        if address == server:
            raise r.fail(hp + ("address",), f"{address} is the appliance's own address")
        if pool is not None and address in pool:
            raise r.fail(hp + ("address",), f"{address} lies inside the dynamic pool {pool.start}-{pool.end}")
        if mac in seen_mac:
            raise r.fail(hp + ("mac",), f"{mac} is already reserved for {seen_mac[mac]}")
        if address in seen_ip:
            raise r.fail(hp + ("address",), f"{address} is already reserved for {seen_ip[address]}")
        if name in seen_name:
            raise r.fail(hp + ("name",), f"{name} is reserved twice")
        profile_text = r.text(h.get("profile", Profile.DEFAULT.value), hp + ("profile",))
        try:
            profile = Profile(profile_text)
        except ValueError:
            choices = " or ".join(p.value for p in Profile)
            raise r.fail(hp + ("profile",), f"{profile_text!r} is not a menu profile ({choices})") from None
        seen_mac[mac], seen_ip[address] = name, name
        seen_name.add(name)
        hosts.append(Host(name, mac, address, profile, _boot_files(r, h.get("boot_files"), hp + ("boot_files",))))
    return tuple(hosts)


def _build_dns(r: _Reader, value: Any, subnet: IPv4Network) -> DnsConfig:
    p = ("dns",)
    d = r.mapping(
        value,
        p,
        {
            "enabled",
            "port",
            "listen",
            "ttl",
            "upstream",
            "recursion_allowed",
            "transfer_allowed",
            "notify",
            "forward_timeout",
            "records",
            "tcp_max_connections",
            "tcp_max_per_client",
            "tcp_idle_timeout",
        },
    )
    up = p + ("upstream",)
    upstreams = tuple(_upstream(r, item, up + (i,)) for i, item in enumerate(r.sequence(d.get("upstream"), up)))
    transfer = r.networks(d.get("transfer_allowed"), p + ("transfer_allowed",))
    notify = _notify_targets(r, d, p, transfer)
    records = []
    rp = p + ("records",)
    for i, item in enumerate(r.sequence(d.get("records"), rp)):
        ip_ = rp + (i,)
        rec = r.mapping(item, ip_, {"name", "type", "value", "ttl"})
        rtype = r.text(r.required(rec, "type", ip_), ip_ + ("type",)).upper()
        if rtype not in ("A", "CNAME", "MX", "TXT", "SRV"):
            raise r.fail(ip_ + ("type",), f"{rtype!r} is not supported (A, CNAME, MX, TXT, SRV)")
        rvalue = r.text(r.required(rec, "value", ip_), ip_ + ("value",))
        if rtype == "A":
            r.ip(rvalue, ip_ + ("value",))
        ttl = rec.get("ttl")
        records.append(
            DnsRecord(
                name=r.text(r.required(rec, "name", ip_), ip_ + ("name",)).lower(),
                type=rtype,
                value=rvalue,
                ttl=None if ttl is None else r.integer(ttl, ip_ + ("ttl",), 0, 2**31 - 1),
            )
        )
    return DnsConfig(
        enabled=r.boolean(d.get("enabled", True), p + ("enabled",)),
        port=r.integer(d.get("port", 53), p + ("port",), 1, 65535),
        listen=tuple(r.ip(v, p + ("listen", i)) for i, v in enumerate(r.sequence(d.get("listen"), p + ("listen",)))),
        ttl=r.integer(d.get("ttl", 3600), p + ("ttl",), 0, 2**31 - 1),
        upstreams=upstreams,
        recursion_allowed=r.networks(d.get("recursion_allowed"), p + ("recursion_allowed",)) or (subnet,),
        transfer_allowed=transfer,
        notify=notify,
        forward_timeout=r.number(d.get("forward_timeout", 2.0), p + ("forward_timeout",), 0.1, 60),
        records=tuple(records),
        tcp_max_connections=r.integer(d.get("tcp_max_connections", 128), p + ("tcp_max_connections",), 1, 65536),
        tcp_max_per_client=r.integer(d.get("tcp_max_per_client", 8), p + ("tcp_max_per_client",), 1, 65536),
        tcp_idle_timeout=r.number(d.get("tcp_idle_timeout", 10.0), p + ("tcp_idle_timeout",), 0.5, 300),
    )


def _notify_targets(r: _Reader, d: dict[str, Any], p: tuple[Any, ...],
                    transfer: tuple[IPv4Network, ...]) -> tuple[tuple[str, int], ...]:
    """`dns.notify`, or by default the single hosts of transfer_allowed: a /24 there names
    secondaries we could not guess, a /32 names exactly one."""
    if "notify" not in d:
        return tuple((str(net.network_address), 53) for net in transfer if net.prefixlen == 32)
    np_ = p + ("notify",)
    targets = []
    for i, item in enumerate(r.sequence(d["notify"], np_)):
        target = _upstream(r, item, np_ + (i,))
        if not any(IPv4Address(target[0]) in net for net in transfer):
            raise r.fail(np_ + (i,), f"{target[0]} is not in dns.transfer_allowed: told of a new serial, it "
                                     "could not fetch the zone")
        if target not in targets:
            targets.append(target)
    return tuple(targets)


def _upstream(r: _Reader, item: Any, path: tuple[Any, ...]) -> tuple[str, int]:
    """`192.0.2.53` or `192.0.2.53:5353` → (address, port); the port defaults to 53."""
    text = r.text(item, path)
    host, colon, port = text.partition(":")
    try:
        address = IPv4Address(host)
    except ValueError:
        raise r.fail(path, f"{text!r}: {host!r} is not an IPv4 address (expected ip or ip:port)") from None
    if not colon or not port:  # "192.0.2.53:" as well: it was accepted before the port was parsed here
        return str(address), 53
    number = int(port) if port.isascii() and port.isdigit() else None
    if number is None or not 1 <= number <= 65535:
        raise r.fail(path, f"{text!r}: port {port!r} is not a whole number from 1 to 65535")
    return str(address), number


def _build_tftp(r: _Reader, value: Any) -> TftpConfig:
    p = ("tftp",)
    d = r.mapping(
        value,
        p,
        {"enabled", "port", "root", "max_blksize", "max_windowsize", "max_transfers", "max_transfers_per_client"}
        | {"timeout", "retries"},
    )
    return TftpConfig(
        enabled=r.boolean(d.get("enabled", True), p + ("enabled",)),
        port=r.integer(d.get("port", 69), p + ("port",), 1, 65535),
        root=Path(r.text(d.get("root", "/srv/tftp"), p + ("root",))),
        max_blksize=r.integer(d.get("max_blksize", 0), p + ("max_blksize",), 0, 65464),
        max_windowsize=r.integer(d.get("max_windowsize", 64), p + ("max_windowsize",), 1, 64),
        max_transfers=r.integer(d.get("max_transfers", 1000), p + ("max_transfers",), 1, 100000),
        max_transfers_per_client=r.integer(
            d.get("max_transfers_per_client", 8), p + ("max_transfers_per_client",), 1, 100000
        ),
        timeout=r.number(d.get("timeout", 1.0), p + ("timeout",), 0.05, 255),
        retries=r.integer(d.get("retries", 5), p + ("retries",), 0, 100),
    )


def _build_http(r: _Reader, value: Any) -> HttpConfig:
    p = ("http",)
    d = r.mapping(value, p, {"enabled", "port", "transfer", "max_connections_per_client", "max_connections",
                             "idle_timeout"})
    transfer = r.text(d.get("transfer", Transfer.TFTP.value), p + ("transfer",))
    if transfer not in {t.value for t in Transfer}:
        raise r.fail(p + ("transfer",), f"{transfer!r} is not a transfer (tftp or http)")
    return HttpConfig(
        enabled=r.boolean(d.get("enabled", True), p + ("enabled",)),
        port=r.integer(d.get("port", 80), p + ("port",), 1, 65535),
        transfer=Transfer(transfer),
        max_connections_per_client=r.integer(d.get("max_connections_per_client", 8),
                                             p + ("max_connections_per_client",), 1, 10000),
        max_connections=r.integer(d.get("max_connections", 512), p + ("max_connections",), 1, 100000),
        idle_timeout=r.number(d.get("idle_timeout", 15.0), p + ("idle_timeout",), 0.5, 3600),
    )


def _build_management(r: _Reader, value: Any, server: IPv4Address, http: HttpConfig) -> ManagementConfig:
    p = ("management",)
    d = r.mapping(value, p, {"enabled", "listen", "token", "stuck_after"})
    defaults = ManagementConfig()
    host, port = _listen(r, d.get("listen", defaults.listen), p + ("listen",), defaults.port)
    if http.enabled and port == http.port and host in (str(server), "0.0.0.0", "::"):
        raise r.fail(p + ("listen",), f"port {port} on {host} is the boot files' http.port; pick another port")
    token = d.get("token")
    if token is not None:
        token = r.text(token, p + ("token",))
        if not token or not token.isprintable() or any(c.isspace() for c in token):
            raise r.fail(p + ("token",), "must be a non-empty string without spaces or control characters")
    return ManagementConfig(
        enabled=r.boolean(d.get("enabled", True), p + ("enabled",)),
        host=host,
        port=port,
        token=token,
        stuck_after=r.number(d.get("stuck_after", defaults.stuck_after), p + ("stuck_after",), 1, 86400),
    )


def _listen(r: _Reader, value: Any, path: tuple[Any, ...], default_port: int) -> tuple[str, int]:
    """`127.0.0.1:8067`, `[::1]:8067`, or an address alone (default port) → (address, port)."""
    text = r.text(value, path).strip()
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise r.fail(path, f"{text!r} is not address:port (an IPv6 address goes in brackets: [::1]:8067)")
        port = rest[1:]
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
    else:
        host, port = text, ""
    try:
        address = ip_address(host)
    except ValueError:
        raise r.fail(path, f"{text!r}: {host!r} is not an IP address (expected address:port)") from None
    if not port:
        return str(address), default_port
    number = int(port) if port.isascii() and port.isdigit() else None
    if number is None or not 1 <= number <= 65535:
        raise r.fail(path, f"{text!r}: port {port!r} is not a whole number from 1 to 65535")
    return str(address), number


def _build_nfs(r: _Reader, value: Any) -> NfsConfig:
    p = ("nfs",)
    d = r.mapping(value, p, {
        "backend", "export_root", "home", "instances_dir", "options", "exports_file", "ganesha_config",
    })
    backend = r.text(d.get("backend", "kernel"), p + ("backend",))
    if backend not in ("kernel", "ganesha"):
        raise r.fail(p + ("backend",), f"{backend!r} is not a backend (kernel or ganesha)")
    defaults = NfsConfig()
    return NfsConfig(
        backend=backend,
        export_root=Path(r.text(d.get("export_root", str(defaults.export_root)), p + ("export_root",))),
        home=Path(r.text(d.get("home", str(defaults.home)), p + ("home",))),
        instances_dir=Path(r.text(d.get("instances_dir", str(defaults.instances_dir)), p + ("instances_dir",))),
        options=r.text(d.get("options", defaults.options), p + ("options",)),
        exports_file=Path(r.text(d.get("exports_file", str(defaults.exports_file)), p + ("exports_file",))),
        ganesha_config=Path(r.text(d.get("ganesha_config", str(defaults.ganesha_config)), p + ("ganesha_config",))),
    )


def _build_instances(r: _Reader, value: Any, nfs: NfsConfig) -> tuple[Instance, ...]:
    p = ("instances",)
    out: list[Instance] = []
    names: set[str] = set()
    for i, item in enumerate(r.sequence(value, p)):
        ip_ = p + (i,)
        d = r.mapping(item, ip_, {"name", "root", "label", "append", "modes"})
        name = r.text(r.required(d, "name", ip_), ip_ + ("name",))
        if not re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]*$", name):
            raise r.fail(ip_ + ("name",), f"{name!r} is not a valid instance name (letters, digits, . _ -)")
        if name in names:
            raise r.fail(ip_ + ("name",), f"instance {name} is defined twice")
        names.add(name)
        modes: list[BootMode] = []
        for j, m in enumerate(r.sequence(d.get("modes", [BootMode.OVERLAY.value]), ip_ + ("modes",))):
            text = r.text(m, ip_ + ("modes", j))
            try:
                modes.append(BootMode(text))
            except ValueError:
                choices = ", ".join(m.value for m in BootMode)
                raise r.fail(ip_ + ("modes", j), f"{text!r} is not a mode ({choices})") from None
        out.append(
            Instance(
                name=name,
                root=Path(r.text(d.get("root", str(nfs.instances_dir / name)), ip_ + ("root",))),
                label=r.text(d.get("label", ""), ip_ + ("label",)),
                append=r.text(d.get("append", ""), ip_ + ("append",)),
                modes=tuple(modes) or (BootMode.OVERLAY,),
            )
        )
    return tuple(out)


def _describe_management(m: ManagementConfig) -> str:
    if not m.enabled:
        return "management: off"
    if m.token is not None:
        access = "token required"
    elif ip_address(m.host).is_loopback:
        access = "no token, this host only"
    else:
        access = "no token: anyone who reaches it sees every machine"
    return f"management: on {m.listen} ({access}), boots stuck after {m.stuck_after:g}s without progress"


# --------------------------------------------------------------------------- paths on this host


def _directory_problem(path: Path, *, follow_links: bool = True) -> str | None:
    """Why `path` cannot serve as a directory, or None when it can."""
    try:
        info = os.stat(path, follow_symlinks=follow_links)
    except FileNotFoundError:
        return f"{path} does not exist"
    except OSError as exc:
        return f"{path} cannot be examined ({exc.strerror})"
    if stat.S_ISLNK(info.st_mode):
        return f"{path} is a symbolic link (name the real directory)"
    if not stat.S_ISDIR(info.st_mode):
        return f"{path} is not a directory"
    return None


def path_problems(config: Config) -> list[str]:
    """Directories the config names that this host lacks, each phrased like a ConfigError
    (file:line: key: problem). Kept out of parse_config, which stays pure: a config is
    parsed on machines (tests, an admin's laptop) where its paths do not exist."""
    marks = config.marks or _Marks(config.source, None)
    problems: list[str] = []

    def check(key: tuple[Any, ...], path: Path, hint: str, follow_links: bool = True) -> None:
        problem = _directory_problem(path, follow_links=follow_links)
        if problem is not None:
            advice = f" ({hint})" if problem.endswith("does not exist") else ""
            problems.append(f"{marks.where(key)}: {_dotted(key)}: {problem}{advice}")

    # The appliance never creates state_dir: its owner and mode are the administrator's
    # decision (the privilege drop refuses one another user could write to).
    check(("state_dir",), config.state_dir, "create it, owned by root", follow_links=False)
    if config.tftp.enabled:
        check(("tftp", "root"), config.tftp.root, "run sidus-appliance bootfiles install or create it")
    for i, inst in enumerate(config.instances):
        check(("instances", i, "root"), inst.root, f"build it: sidus-appliance image build {inst.name}")
    return problems


def check_paths(config: Config) -> None:
    """Raise ConfigError naming every configured directory that is missing or not a directory."""
    problems = path_problems(config)
    if problems:
        raise ConfigError("\n".join(problems))


def describe(config: Config) -> str:
    """The effective settings, as `check` prints them."""
    lines = [
        f"source:      {config.source}",
        f"interface:   {config.interface} ({config.address})",
        f"subnet:      {config.subnet}  gateway {config.gateway}  dns {', '.join(map(str, config.dns_servers))}",
        f"domain:      {config.domain}  (reverse {config.reverse_zone})",
        f"state_dir:   {config.state_dir}",
        f"user:        {config.user or '(stay root)'}",
    ]
    d = config.dhcp
    pool = f"{d.pool.start}-{d.pool.end} named {d.pool.hostname!r}" if d.pool else "none (reservations only)"
    lease = "infinite" if d.lease_time == INFINITE_LEASE else f"{d.lease_time}s"
    lines.append(f"dhcp:        {'on' if d.enabled else 'off'} port {d.port}, pool {pool}, lease {lease}")
    for arch, name in sorted(d.boot_files.items()):
        lines.append(f"  arch {arch:<5} -> {name}")
    lines.append(f"  other      -> {d.default_boot_file}")
    lines.append(f"  ipv6 ra    -> {'bare RA (lifetime 0) to Router Solicitations' if d.ipv6_ra_quench else 'off'}")
    journal = "fsync before each ACK" if d.fsync else "no fsync (a power cut may lose the last leases)"
    lines.append(f"  journal    -> {journal}")
    lines.append(f"  quarantine -> at most {d.max_quarantine_per_client} declined address(es) per client")
    for h in config.hosts:
        own = "".join(f" arch{arch}={name}" for arch, name in sorted(h.boot_files.items()))
        lines.append(f"host:        {h.name} {h.mac} {h.address} profile={h.profile}{own}")
    n = config.dns
    upstreams = ", ".join(f"{address}:{port}" for address, port in n.upstreams) or "none"
    lines.append(
        f"dns:         {'on' if n.enabled else 'off'} port {n.port}, upstream {upstreams}, "
        f"recursion for {', '.join(map(str, n.recursion_allowed))}, "
        f"axfr for {', '.join(map(str, n.transfer_allowed)) or 'nobody'}"
    )
    lines.append(f"  notify     -> {', '.join(f'{a}:{port}' for a, port in n.notify) or 'nobody'}")
    lines.append(
        f"  tcp        -> {n.tcp_max_connections} connections, {n.tcp_max_per_client} per client, "
        f"idle timeout {n.tcp_idle_timeout:g}s"
    )
    for rec in n.records:
        lines.append(f"  record     {rec.name} {rec.type} {rec.value}")
    t = config.tftp
    lines.append(f"tftp:        {'on' if t.enabled else 'off'} port {t.port}, root {t.root}")
    lines.append(f"  transfers  -> {t.max_transfers} at once, {t.max_transfers_per_client} per client")
    h = config.http
    lines.append(f"http:        {'on' if h.enabled else 'off'} port {h.port}, kernels for iPXE/GRUB over {h.transfer}, "
                 f"{h.max_connections} connections, {h.max_connections_per_client} per client")
    lines.append(
        f"nfs:         {config.nfs.backend}, instances in {config.nfs.instances_dir}, options {config.nfs.options}"
    )
    for inst in config.instances:
        lines.append(f"instance:    {inst.name} root {inst.root} modes {','.join(inst.modes)}")
    lines.append(_describe_management(config.management))
    return "\n".join(lines)

