"""``python -m mailrepl``: the ``mailrepl`` command."""
import sys

from mailrepl.shared.cli.main import main

sys.exit(main())
