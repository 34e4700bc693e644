"""Exact and near-duplicate detection over a stream of decoded images.

`Deduplicator` holds the hashes of every image kept so far and, for each new one, says
whether to keep it. It is a plain, single-owner object: the data stage runs it in ONE
place (one pass that sees every sample in a fixed order), because deduplication is a
global decision and two shards each keeping "their" copy would defeat it.

Exact duplicates are found by the decoded-pixel sha256 (a dict). Near duplicates are
found by Hamming distance between 64-bit perceptual hashes through a BK-tree: a metric
tree whose triangle-inequality pruning keeps a query to a fraction of the kept set
(a linear scan would also do below ~100k images; the tree keeps large sets cheap).

Deterministic: the first image seen is kept; a later one is dropped as a duplicate of
the nearest kept image (ties go to the one kept earliest). Dropped images never join the
index, so a chain A~B~C does not drop C unless C is itself close to a kept image.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bluepri.errors import BluepriError

EXACT_DUPLICATE = "exact_duplicate"
NEAR_DUPLICATE = "near_duplicate"

DEFAULT_NEAR_DUPLICATE_THRESHOLD = 6


@dataclass(frozen=True)
class Duplicate:
    """Why a sample is dropped: `reason`, the kept sample it duplicates, the pHash distance."""

    reason: str
    of: str
    distance: int


@dataclass
class _BKNode:
    value: int
    order: int
    sample_id: str
    children: dict[int, _BKNode] = field(default_factory=dict)


class _BKTree:
    """A BK-tree over integers with Hamming distance (popcount of XOR)."""

    def __init__(self) -> None:
        self._root: _BKNode | None = None
        self._size = 0

    def add(self, value: int, sample_id: str) -> None:
        node = _BKNode(value, self._size, sample_id)
        self._size += 1
        if self._root is None:
            self._root = node
            return
        current = self._root
        while True:
            distance = (current.value ^ value).bit_count()
            child = current.children.get(distance)
            if child is None:
                current.children[distance] = node
                return
            current = child

    def nearest_within(self, value: int, radius: int) -> tuple[int, int, str] | None:
        """(distance, insertion order, sample id) of the nearest value within radius."""
        best: tuple[int, int, str] | None = None
        pending = [self._root] if self._root is not None else []
        while pending:
            node = pending.pop()
            distance = (node.value ^ value).bit_count()
            if distance <= radius:
                candidate = (distance, node.order, node.sample_id)
                if best is None or candidate < best:
                    best = candidate
            # Triangle inequality: only subtrees at edge distance d with
            # |d - distance| <= radius can hold a value within radius of the query.
            for edge, child in node.children.items():
                if distance - radius <= edge <= distance + radius:
                    pending.append(child)
        return best


class Deduplicator:
    """Keeps the first of each group of identical or near-identical images.

    `threshold` is the largest pHash Hamming distance still called a near duplicate;
    None turns near-duplicate detection off (exact duplicates are always dropped).
    """

    def __init__(self, threshold: int | None = DEFAULT_NEAR_DUPLICATE_THRESHOLD) -> None:
        if threshold is not None and not 0 <= threshold <= 64:
            raise BluepriError(
                f"near-duplicate threshold must be between 0 and 64 bits, got {threshold}"
            )
        self.threshold = threshold
        self._by_pixels: dict[str, str] = {}
        self._phashes = _BKTree()
        self.kept = 0
        self.dropped: dict[str, int] = {EXACT_DUPLICATE: 0, NEAR_DUPLICATE: 0}

    def check(self, sample_id: str, pixel_hash: str, phash: str) -> Duplicate | None:
        """None if the sample is kept (and remembered), else why it is dropped."""
        duplicate = self._find(pixel_hash, phash)
        if duplicate is not None:
            self.dropped[duplicate.reason] += 1
            return duplicate
        self._by_pixels[pixel_hash] = sample_id
        self._phashes.add(int(phash, 16), sample_id)
        self.kept += 1
        return None

    def _find(self, pixel_hash: str, phash: str) -> Duplicate | None:
        exact_of = self._by_pixels.get(pixel_hash)
        if exact_of is not None:
            return Duplicate(EXACT_DUPLICATE, exact_of, 0)
        if self.threshold is None:
            return None
        nearest = self._phashes.nearest_within(int(phash, 16), self.threshold)
        if nearest is None:
            return None
        distance, _, near_of = nearest
        return Duplicate(NEAR_DUPLICATE, near_of, distance)
