#!/bin/sh
# shellcheck disable=SC2154 # reason, interface: set by dhclient
# sidus: the DHCP lease of a diskless client lasts forever.
#
# dracut's dhclient-script gives the address a valid_lft of the lease time, and dracut kills
# dhclient before switch_root: with a finite lease the kernel would drop the address when it
# runs out, and with it the NFS root. So we drop the lifetimes (the address is permanent) and
# ignore the reasons that would take the address away. The seed patched dhclient-script in place.

case "$reason" in
    EXPIRE | EXPIRE6 | FAIL | RELEASE | RELEASE6 | STOP | STOP6)
        echo "sidus: dhclient $reason on $interface ignored: the root is on NFS, the address stays"
        exit 0
        ;;
esac
unset new_dhcp_lease_time new_max_life new_preferred_life
exec "${SIDUS_DHCLIENT_SCRIPT:-/sbin/dhclient-script.dracut}" "$@"
