"""A gateway's heap once it is built: start-up objects frozen out of the cyclic collector, young
objects collected after ``GC_THRESHOLDS`` allocations (in a process of its own: it changes the
interpreter's collector settings)."""
from __future__ import annotations

import json
import subprocess
import sys

from mailrepl.shared.runtime.process import GC_THRESHOLDS


def test_settle_heap_freezes_what_start_up_built_and_raises_the_young_threshold():
    code = (
        "import gc, json\n"
        "import mailrepl.recovery.app  # a gateway's modules, as at start-up\n"
        "from mailrepl.shared.runtime.process import settle_heap\n"
        "before = (gc.get_threshold(), gc.get_freeze_count())\n"
        "settle_heap()\n"
        "print(json.dumps({'before': before, 'after': (gc.get_threshold(), gc.get_freeze_count()),"
        " 'enabled': gc.isenabled()}))\n"
    )
    out = json.loads(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                                    text=True).stdout)
    (threshold_before, frozen_before), (threshold_after, frozen_after) = out["before"], out["after"]
    assert frozen_before == 0 and frozen_after > 50_000, "the start-up heap is left out of collections"
    assert tuple(threshold_before) == (700, 10, 10) and tuple(threshold_after) == GC_THRESHOLDS
    assert out["enabled"], "the collector still runs (cycles are still freed)"
