"""The shard map: which Citus node holds a session, by PostgreSQL's ``hashtext`` of its id and
the hash ranges of the sessions table's shards (see :mod:`convostore.citus`)."""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass

REFRESH = 60.0
"""Seconds between two readings of the shard map."""

Node = tuple[str, int]
"""A node's host and port, as the cluster's metadata names them."""

_MASK = 0xFFFFFFFF


def _rot(x: int, k: int) -> int:
    return ((x << k) | (x >> (32 - k))) & _MASK


# lookup3's two mixing steps as (target, source, rotation) triples over v = [a, b, c]: each
# step of mix() is  v[x] -= v[y]; v[x] ^= rot(v[y], k); v[y] += v[(x + 1) % 3], with x going
# a, b, c, a, b, c and y the one before x; each step of final() is  v[x] ^= v[y];
# v[x] -= rot(v[y], k), with x going c, a, b, c, a, b, c.
_MIX = tuple((i % 3, (i + 2) % 3, k) for i, k in enumerate((4, 6, 8, 16, 19, 4)))
_FINAL = tuple(((i + 2) % 3, (i + 1) % 3, k) for i, k in enumerate((14, 11, 25, 16, 4, 14, 24)))


def hashtext(value: str) -> int:
    """PostgreSQL's ``hashtext(value)`` for a deterministic collation (Bob Jenkins' lookup3
    ``hash_bytes`` over the UTF-8 bytes), as the signed 32-bit integer Citus places rows by."""
    k = value.encode()
    length = len(k)
    v = [(0x9E3779B9 + length + 3923095) & _MASK] * 3
    i = 0
    while length - i >= 12:
        for j in range(3):
            v[j] = (v[j] + int.from_bytes(k[i + 4 * j : i + 4 * j + 4], "little")) & _MASK
        for x, y, r in _MIX:
            v[x] = ((v[x] - v[y]) & _MASK) ^ _rot(v[y], r)
            v[y] = (v[y] + v[(x + 1) % 3]) & _MASK
        i += 12
    tail = k[i:]
    # The last 0-11 bytes, little-endian; the lowest byte of c is left for the length.
    v[0] = (v[0] + int.from_bytes(tail[0:4], "little")) & _MASK
    v[1] = (v[1] + int.from_bytes(tail[4:8], "little")) & _MASK
    v[2] = (v[2] + (int.from_bytes(tail[8:11], "little") << 8)) & _MASK
    for x, y, r in _FINAL:
        v[x] = ((v[x] ^ v[y]) - _rot(v[y], r)) & _MASK
    c = v[2]
    return c - (1 << 32) if c & 0x80000000 else c


@dataclass(frozen=True, slots=True)
class ShardMap:
    """The hash ranges of the sessions table's shards (sorted, not overlapping) and the node
    holding each."""

    lows: tuple[int, ...]
    highs: tuple[int, ...]
    nodes: tuple[Node | None, ...]

    @classmethod
    def from_rows(cls, rows: Sequence[tuple[int, int, Node | None]]) -> ShardMap:
        """From ``(low, high, node)`` rows, the node ``None`` for a shard the node the map was
        read on holds itself (the main pool's node)."""
        ordered = sorted(rows, key=lambda r: r[0])
        return cls(tuple(r[0] for r in ordered), tuple(r[1] for r in ordered), tuple(r[2] for r in ordered))

    def node_for(self, session_id: str) -> Node | None:
        """The node holding *session_id*'s shard; ``None`` if that is the main pool's node or
        no range holds its hash."""
        h = hashtext(session_id)
        i = bisect.bisect_right(self.lows, h) - 1
        if i < 0 or h > self.highs[i]:
            return None
        return self.nodes[i]
