"""The fault suite: each scenario breaks the running system at seeded random moments while mail
arrives and users work, then heals it; replication must drain and the standby must equal the
primary: nothing lost, nothing duplicated, no flag, date or folder difference.

The CI subset runs by default (a fixed seed, a few faults per scenario); ``MAILREPL_FAULTS=full``
runs at least 20 faults per scenario. The seed is printed with every result.
"""
from __future__ import annotations

import dataclasses
import re

import pytest

from tests.faults.report import format_table
from tests.faults.scenarios import SCENARIOS, run_scenario

pytestmark = [pytest.mark.dovecot, pytest.mark.slow]


def scenario_id(scenario) -> str:
    return re.sub(r"[^a-z0-9]+", "-", scenario.name.lower()).strip("-")


@pytest.mark.parametrize("scenario", SCENARIOS, ids=scenario_id)
def test_scenario(scenario, fault_site, fault_profile, fault_seed, fault_corpus, record_property):
    print(f"\nfault suite: {scenario.name}, {fault_profile.name} profile, seed {fault_seed}")
    fault_site.dirty = True  # until this scenario has passed
    row, diff, counts = run_scenario(fault_site, scenario, fault_profile, fault_seed, fault_corpus)
    record_property("fault_row", dataclasses.asdict(row))  # to the table, also from a parallel worker
    print(format_table([row]))
    assert row.faults >= scenario.planned_faults(fault_profile)
    assert counts.delivered > 0 and counts.changes_made > 0, f"the traffic did nothing: {counts.summary()}"
    crashed = [k for k in counts.failed if k.startswith("crashed")]
    assert not crashed, f"the traffic generator failed: {crashed}"
    problems = list(fault_site.notes)
    if not diff.equal:
        problems.append(f"standby differs from the primary: {diff.as_dict()}\n  " + "\n  ".join(diff.details))
    if problems:
        pair = fault_site.pair
        pytest.fail(f"{scenario.name} (seed {fault_seed}, MAILREPL_FAULTS_SEED={fault_seed} to reproduce):\n"
                    + "\n".join(problems)
                    + f"\n--- source log ---\n{pair.source.log.read_text()[-3000:]}"
                    + f"\n--- recovery log ---\n{pair.recovery.log.read_text()[-3000:]}", pytrace=False)
    fault_site.dirty = False
