#!/bin/bash
# shellcheck disable=SC2154 # moddir, initdir, hostonly: set by dracut
# dracut module "sidus": boot a shared read-only NFS root under a RAM overlay.
#
#   sidus=overlay  the NFS root becomes the lower layer of an overlay whose upper and work
#                  directories live on a tmpfs; the machine writes to RAM, never to the server.
#   sidus=aufs     the same with aufs, where the kernel has it (falls back to overlay).
#   (no sidus=)    the root stays exactly as dracut mounted it: the master's read-write boot.
#
# It also keeps the DHCP address forever (see sidus-dhclient-script.sh): a diskless client
# that loses its address loses its root.
# Enable with `add_dracutmodules+=" sidus "` (the image builder writes that for you).

# called by dracut
check() {
    # Only when asked for: never pulled in by host-only guesswork.
    return 255
}

# called by dracut
depends() {
    echo nfs
    return 0
}

# called by dracut
installkernel() {
    hostonly='' instmods overlay
    # aufs is not in Debian kernels since bookworm; take it when this kernel has it.
    hostonly='' instmods aufs
}

# called by dracut
install() {
    inst_multiple mount umount mkdir modprobe
    inst_hook pre-pivot 20 "$moddir/sidus-overlay.sh"
    # network-legacy (dhclient) is installed before us (35 < 90): wrap its dhclient-script.
    if [[ -e "$initdir/sbin/dhclient-script" ]]; then
        mv "$initdir/sbin/dhclient-script" "$initdir/sbin/dhclient-script.dracut"
        inst_script "$moddir/sidus-dhclient-script.sh" /sbin/dhclient-script
    fi
}
