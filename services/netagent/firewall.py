"""The agent's nftables tables (isolation.py says what they hold) in the
host namespace and in every router, through libnftables with one kept
context per namespace. Called on the agent's kernel thread only.

Every sync reads the tables back first: their rules are compared, as the
kernel lists them, with what this agent last wrote (so a rule deleted or
edited by hand is put back), and their set elements with the wanted ones.
Between syncs, a namespace's nftables generation tells whether anything
there changed at all, which costs one small netlink call per namespace.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field

from pinet.hostnet.command import KernelError
from pinet.hostnet.nft import Generation, Nft, PerNamespace, listing_digest
from services.netagent import isolation
from services.netagent.isolation import Base, Elements

log = logging.getLogger(__name__)
_NONE: frozenset[tuple[str, ...]] = frozenset()


@dataclass
class _Namespace:
    netns: str
    nft: Nft
    generation: Generation
    digest: str = ""  # of the rules as listed after this agent last wrote them
    seen: int = -1  # generation when last verified
    # Set elements as last read or written ("family table set" -> elements).
    elements: Elements = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)

    def close(self) -> None:
        self.nft.close()
        self.generation.close()


class Firewall:
    """Namespaces are named by key: "" is the host, a router is its netns."""

    def __init__(self, host_netns: str) -> None:
        self.host_netns = host_netns
        self._spaces: PerNamespace[_Namespace] = PerNamespace(
            lambda netns: _Namespace(netns, Nft(netns), Generation(netns)), _Namespace.close
        )

    def _netns(self, key: str) -> str:
        return key or self.host_netns

    def _key(self, netns: str) -> str:
        return "" if netns == self.host_netns else netns

    def _space(self, key: str) -> _Namespace:
        return self._spaces.get(self._netns(key))

    def _read(self, space: _Namespace, base: Base) -> tuple[isolation.Read, str]:
        objects = []
        for table in base.tables:
            objects += space.nft.list_json(f"table {table}")
        return isolation.parse(objects), listing_digest(objects)

    def ensure(self, key: str, base: Base, want: Elements) -> list[str]:
        """Makes the tables of namespace key equal to base and want."""
        space = self._space(key)
        # Read before the tables: whatever changes after this is seen at the
        # next check, even a change made while this sync runs.
        generation = space.generation.read()
        read, digest = self._read(space, base)
        space.counters = read.counters
        where = space.netns or "host"
        if read.markers != [base.marker] or digest != space.digest:
            # Rules not as this agent wrote them (or not yet written by this
            # process): the tables are made anew with their elements, in one
            # transaction, so no packet meets them half made.
            reset = "".join(f"add table {t}\ndelete table {t}\n" for t in base.tables)
            fill = "".join(isolation.element_script("add", p, items) for p, items in want.items())
            self._run(space, reset + base.script + fill)
            read, space.digest = self._read(space, base)
            space.elements = {path: set(items) for path, items in want.items()}
            space.seen = generation
            return [f"{where}: rule set"]
        space.elements = {path: read.sets.get(path, set()) for path in want}
        script, count = isolation.diff_script(want, space.elements)
        changes = []
        if script:
            self._run(space, script)
            space.elements = {path: set(items) for path, items in want.items()}
            changes.append(f"{where}: {count} guard elements")
        space.seen = generation
        return changes

    def update(self, key: str, add: Elements, remove: Elements) -> bool:
        """Adds and removes elements without reading the tables first (the
        path of one pod or one peer); False when the namespace's tables
        were never synced, so a full ensure is due."""
        space = self._spaces.peek(self._netns(key))
        if space is None or not space.elements:
            return False
        have = space.elements
        new = {path: items - have.get(path, set()) for path, items in add.items()}
        gone = {path: items & have.get(path, set()) for path, items in remove.items()}
        script = "".join(isolation.element_script("delete", p, items) for p, items in gone.items())
        script += "".join(isolation.element_script("add", p, items) for p, items in new.items())
        if script:
            self._run(space, script)
            for path, items in new.items():
                have.setdefault(path, set()).update(items)
            for path, items in gone.items():
                have.get(path, set()).difference_update(items)
        return True

    def elements(self, key: str, path: str) -> AbstractSet[tuple[str, ...]]:
        """What this agent knows set path of namespace key to hold (a view:
        it changes with the next update)."""
        space = self._spaces.peek(self._netns(key))
        return space.elements.get(path, _NONE) if space is not None else _NONE

    def read_set(self, key: str, path: str) -> set[tuple[str, ...]]:
        """What set path ("family table set") holds in the kernel now."""
        family, table, name = path.split()
        objects = self._space(key).nft.list_json(f"set {family} {table} {name}")
        return isolation.parse(objects).sets.get(path, set())

    def _run(self, space: _Namespace, script: str) -> None:
        try:
            space.nft.run(script)
        except KernelError:
            space.elements = {}  # unknown now: the next sync reads them
            raise

    def remove(self, key: str, tables: tuple[str, ...]) -> list[str]:
        """Deletes the tables (those that exist) and forgets the namespace."""
        netns = self._netns(key)
        space = self._spaces.peek(netns)
        changes = []
        with contextlib.closing(Nft(netns)) if space is None else contextlib.nullcontext(space.nft) as nft:
            for table in tables:
                if nft.list_json(f"table {table}"):
                    nft.run(f"delete table {table}")
                    changes.append(f"{netns or 'host'}: {table} removed")
        self._spaces.forget(netns)
        return changes

    def forget(self, key: str) -> None:
        """The namespace is gone (a router removed with its tables)."""
        self._spaces.forget(self._netns(key))

    def changed(self) -> list[str]:
        """Keys of the namespaces whose nftables changed since their last
        sync (by anyone: the next sync tells whether it was ours)."""
        out = []
        for netns, space in self._spaces.items():
            try:
                if space.generation.read() != space.seen:
                    out.append(self._key(netns))
            except (KernelError, OSError):
                out.append(self._key(netns))
        return out

    def namespaces(self) -> list[str]:
        return [self._key(netns) for netns, _ in self._spaces.items()]

    def counters(self) -> dict[str, dict[str, int]]:
        """Packets each drop counter counted, per namespace key, as of the
        last sync or refresh."""
        return {self._key(netns): dict(space.counters) for netns, space in self._spaces.items()}

    def refresh_counters(self, key: str, tables: tuple[str, ...]) -> None:
        space = self._spaces.peek(self._netns(key))
        if space is None:
            return
        objects = []
        for table in tables:
            objects += space.nft.list_json(f"counters table {table}")
        space.counters = isolation.parse(objects).counters

    def close(self) -> None:
        self._spaces.close()
