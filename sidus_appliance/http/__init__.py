"""HTTP in the appliance process (aiohttp): the virtual boot tree for UEFI HTTP boot, iPXE and GRUB.

    ranges.py    sans-IO: a Range header against a file size (RFC 9110 14.2)
    budget.py    sans-IO: connections per client address and in all, admitted or refused
    service.py   the aiohttp server: GET/HEAD of the same tree TFTP serves, with the same jail and
                 refusals, Range, sendfile for file bodies, one log line per transfer
"""
