# Two entry points for a newcomer on Debian 12, as root: `make demo` and `make test`.
# Both install what they need (Debian packages, a virtualenv) and nothing else.

VENV      ?= .venv
PY        := $(VENV)/bin/python
APT       := ./scripts/apt-install

# What the tests and the demo use: real DHCP/DNS/TFTP clients, PXE firmware, boot loaders,
# a userspace NFS server (the kernel may have no nfsd), debootstrap for the image builder,
# headless Chromium for the management page, systemd-analyze and strace for the service unit,
# BIND and Knot as DNS secondaries (run in lab namespaces by the tests, never as services).
APT_TEST  := iproute2 python3-venv python3-dev gcc isc-dhcp-client udhcpc dnsutils curl \
             tftp-hpa atftp pxelinux syslinux-common syslinux-efi qemu-system-x86 ipxe-qemu \
             ovmf ipxe shim-signed shim-helpers-amd64-signed grub-efi-amd64-signed busybox-static cpio procps \
             nfs-ganesha nfs-ganesha-vfs rpcbind nfs-common libnfs-utils shellcheck debootstrap chromium \
             systemd strace bind9 knot
# The reference servers the benchmarks compare us with (never started outside a namespace).
APT_BENCH := dnsmasq-base kea-admin kea-dhcp4-server tftpd-hpa dnsperf nginx-light

.PHONY: demo test test-all lint bench deps venv clean

$(VENV)/.stamp: pyproject.toml
	$(APT) $(APT_TEST)
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $@

venv: $(VENV)/.stamp

deps: venv
	$(APT) $(APT_TEST)

lint: deps
	$(VENV)/bin/ruff check sidus_appliance tests bench

# `make test` boots each firmware kind once end to end (trixie over NFS: BIOS, UEFI, Secure Boot);
# `make test-all` adds the e2e_extra boots (the other client/master pairs, and bookworm's), ~20 min more.
test: deps lint
	$(VENV)/bin/pytest -v -m "not e2e_extra" tests

test-all: deps lint
	$(VENV)/bin/pytest -v tests

demo: deps
	$(VENV)/bin/sidus-appliance lab demo

bench: deps
	$(APT) $(APT_BENCH)
	$(PY) bench/dhcp.py
	$(PY) bench/dns.py --rounds 3
	$(PY) bench/tftp.py
	$(PY) bench/storm.py --transport tftp http

clean:
	rm -rf $(VENV) .pytest_cache
