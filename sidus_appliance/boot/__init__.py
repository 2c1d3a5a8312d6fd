"""The boot policy: every decision about *how* a machine boots, in one package.

DHCP, the TFTP tree, the menu renderers and the image builder ask it; none decides alone
(model: danderson/netboot's pixiecore `Booter.BootSpec(Machine)`).

    model.py     the vocabulary: Profile, BootMode, ClientKind (Enums, never bare strings)
    loaders.py   which loader a client gets: arch (option 93 / PXEClient:Arch) -> boot file
    kernels.py   how a kernel or initrd is named (`vmlinuz-<ver>@<instance>`) and found
    versions.py  Debian's version ordering (`dpkg --compare-versions` semantics)
    menus.py     which entries a MAC's menu holds (instances x modes; the master read-write)
    pxelinux.py  those entries rendered as a pxelinux/syslinux config
"""
