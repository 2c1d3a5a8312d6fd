#!/bin/sh
# sidus pre-pivot hook: with sidus=overlay on the kernel command line, put the read-only NFS
# root (already mounted on $NEWROOT) under an overlay whose upper/work live on a tmpfs.
# Without sidus= the root is left exactly as mounted (the master boots it read-write).
#
# Afterwards (and in the booted system, since /run moves along at switch_root):
#   /run/sidus/lower  the NFS root, read-only
#   /run/sidus/rw     the tmpfs holding upper/ (every change since boot) and work/
#
# Options: sidus.size=SIZE  tmpfs size (default 50% of RAM, as tmpfs itself).
#
# Each client is a machine of its own: a machine ID found in the shared root is blanked in the
# RAM layer, so systemd makes a fresh one every boot (see sidus_own_machine_id).
# This file is sourced by dracut's hook runner: no `exit` at top level.

# shellcheck source=/dev/null
type getarg > /dev/null 2>&1 || . /lib/dracut-lib.sh

# The builder leaves /etc/machine-id empty, but the master's read-write boot commits its own ID
# there at the end of its first boot (systemd-machine-id-commit), and so does systemd's postinst
# on an upgrade: every client would then share the master's ID (journal, D-Bus, DHCP DUIDs).
sidus_own_machine_id() {
    [ -s "$NEWROOT/etc/machine-id" ] || return 0
    if : > "$NEWROOT/etc/machine-id"; then
        info "sidus: the shared root's machine ID blanked in RAM; systemd makes this boot its own"
    else
        warn "sidus: cannot blank /etc/machine-id; this client shares the master's machine ID"
    fi
}

sidus_overlay() {
    _sidus_mode=$(getarg sidus=)
    [ -z "$_sidus_mode" ] && return 0
    case "$_sidus_mode" in
        overlay | aufs) ;;
        *)
            warn "sidus: unknown mode sidus=$_sidus_mode (overlay or aufs); root left as mounted"
            return 0
            ;;
    esac
    if [ -z "$NEWROOT" ] || ! [ -d "$NEWROOT" ]; then
        warn "sidus: no root mounted at '$NEWROOT'; nothing to overlay"
        return 1
    fi
    _sidus_base=${SIDUS_BASE:-/run/sidus}
    _sidus_size=$(getarg sidus.size=)
    _sidus_size=${_sidus_size:-50%}

    mkdir -p "$_sidus_base/lower" "$_sidus_base/rw"
    if ! mount --bind "$NEWROOT" "$_sidus_base/lower"; then
        warn "sidus: cannot bind $NEWROOT; booting the root as mounted"
        return 1
    fi
    mount -o remount,bind,ro "$_sidus_base/lower" || warn "sidus: lower layer stays as mounted"
    if ! mount -t tmpfs -o "mode=0755,size=$_sidus_size" sidus-rw "$_sidus_base/rw"; then
        warn "sidus: cannot mount the tmpfs (size=$_sidus_size); booting the root as mounted"
        umount "$_sidus_base/lower"
        return 1
    fi
    mkdir -p "$_sidus_base/rw/upper" "$_sidus_base/rw/work"

    if [ "$_sidus_mode" = aufs ]; then
        if modprobe aufs > /dev/null 2>&1 \
            && mount -t aufs -o "br=$_sidus_base/rw/upper=rw:$_sidus_base/lower=ro" sidus "$NEWROOT"; then
            info "sidus: / is aufs over the NFS root, changes in RAM"
            sidus_own_machine_id
            return 0
        fi
        warn "sidus: aufs is not available in this kernel; using overlay"
    fi

    modprobe overlay > /dev/null 2>&1 || : # built in, or loaded already
    if ! mount -t overlay -o "lowerdir=$_sidus_base/lower,upperdir=$_sidus_base/rw/upper,workdir=$_sidus_base/rw/work" \
        sidus "$NEWROOT"; then
        warn "sidus: overlay mount failed; booting the read-only root as mounted"
        umount "$_sidus_base/rw"
        umount "$_sidus_base/lower"
        return 1
    fi
    info "sidus: / is an overlay over the NFS root, changes in RAM (tmpfs size=$_sidus_size)"
    sidus_own_machine_id
    return 0
}

sidus_overlay
