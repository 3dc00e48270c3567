"""mailrepl: transaction-log mailbox replication with cutover and failback.

The installed distribution has this one top-level package; the project's folders are its
subpackages: ``mailrepl.shared`` (what both gateways run), ``mailrepl.gateway`` (the source
gateway) and ``mailrepl.recovery`` (the recovery gateway). ``python -m mailrepl`` is the
``mailrepl`` command.
"""
__version__ = "0.1.0"
