"""Capture state: the one owner of folder cursors, the catalogue and the id map.

What a gateway knows of a copy of a mailbox lives in five tables: ``folder_state`` (a cursor
and pending capture work per folder), ``catalog`` (what capture knows of each message: id,
folder, UID, GUID, hash, flags), ``idmap`` (where the replayed messages are on the server
written into), ``replica_folder`` (the folders that server's copy must have) and ``mid_alias``
(DR ids of the source's messages after a cutover). Only this package writes them (and the
store's migrations):

- :mod:`.pairing` — which known folder is which live folder (pure);
- :mod:`.folder_order` — the order of a cycle's folder renames and creates, each onto a free
  name (a swap through a temporary name), as the capture state and the standby apply them (pure);
- :mod:`.catalog` — :class:`CaptureState`, the folder and catalogue reads and writes of the
  capture engine, one mailbox in the caller's transaction;
- :mod:`.rebuild` — the capture state of a copy rebuilt from a server listing: a pure plan and
  one applier (the standby view, the re-base at the end of failback);
- :mod:`.idmap` — :class:`IdMap` and the id aliases (replay, cutover, both failback sides);
- :mod:`.replica_folders` — :class:`ReplicaFolders`, the folders a replica's copy must have as
  the applied changes say (empty ones included), kept by replay.
"""
from mailrepl.shared.capture_state.catalog import (
    CaptureState, CatalogRow, NewEntry, PendingWork, known_folders, known_folders_counted, pending_folders,
)
from mailrepl.shared.capture_state.idmap import (
    IdMap, MapEntry, alias_catalogued, aliases, drop_aliases, rebuild_from_catalog, seed_from_catalog,
)
from mailrepl.shared.capture_state.replica_folders import ReplicaFolders
from mailrepl.shared.capture_state.pairing import FolderMatch, KnownFolder, pair_folders
from mailrepl.shared.capture_state.rebuild import (
    Addition, FolderListing, FolderOutcome, Fresh, Keep, Placement, RebuildPlan, apply_rebuild, plan_rebuild,
)

__all__ = [
    "CaptureState", "CatalogRow", "NewEntry", "PendingWork", "known_folders", "known_folders_counted",
    "pending_folders",
    "IdMap", "MapEntry", "alias_catalogued", "aliases", "drop_aliases", "rebuild_from_catalog", "seed_from_catalog",
    "FolderMatch", "KnownFolder", "pair_folders", "ReplicaFolders",
    "Addition", "FolderListing", "FolderOutcome", "Fresh", "Keep", "Placement", "RebuildPlan", "apply_rebuild",
    "plan_rebuild",
]
