"""Observe: what the appliance saw of each machine's boot (issue 12).

    events.py    what the services emit: DhcpEvent (one per DHCP decision), TransferEvent (one
                 when a TFTP or HTTP transfer ends)
    tracker.py   BootTracker, sans-IO: events in, per-MAC boot state out (phases, BOOTING /
                 BOOTED / STUCK), counters and phase-duration histograms for the metrics
    web.py       the management endpoint: page, /api/machines, server-sent events, /metrics
"""
