"""The adapter contract suite (``mailrepl.shared.adapters.base``), run against every adapter."""
