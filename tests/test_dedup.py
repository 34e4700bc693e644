"""Deduplicator: first seen kept, exact and near duplicates named, BK-tree equals a scan."""

from __future__ import annotations

import numpy as np
import pytest

from bluepri.data.decode import decode_image, perceptual_hash, pixel_sha256
from bluepri.data.dedup import EXACT_DUPLICATE, NEAR_DUPLICATE, Deduplicator, Duplicate
from bluepri.errors import BluepriError
from odd_corpus import build_odd_corpus


def _hex(value: int) -> str:
    return f"{value:016x}"


def _flip_bits(value: int, count: int, start: int = 0) -> int:
    return value ^ sum(1 << bit for bit in range(start, start + count))


BASE = 0x0123_4567_89AB_CDEF


def test_first_seen_is_kept_and_exact_copy_dropped():
    dedup = Deduplicator()
    assert dedup.check("a", "pixels-1", _hex(BASE)) is None
    assert dedup.check("b", "pixels-1", _hex(BASE ^ 0xFFFF)) == Duplicate(EXACT_DUPLICATE, "a", 0)
    assert dedup.kept == 1 and dedup.dropped == {EXACT_DUPLICATE: 1, NEAR_DUPLICATE: 0}


def test_near_duplicate_up_to_threshold_inclusive():
    dedup = Deduplicator(threshold=6)
    assert dedup.check("a", "p-a", _hex(BASE)) is None
    assert dedup.check("b", "p-b", _hex(_flip_bits(BASE, 6))) == Duplicate(NEAR_DUPLICATE, "a", 6)
    assert dedup.check("c", "p-c", _hex(_flip_bits(BASE, 7))) is None
    assert dedup.kept == 2 and dedup.dropped[NEAR_DUPLICATE] == 1


def test_the_nearest_kept_image_is_named():
    dedup = Deduplicator(threshold=6)
    dedup.check("far", "p1", _hex(_flip_bits(BASE, 5, start=0)))
    dedup.check("near", "p2", _hex(_flip_bits(BASE, 2, start=40)))  # 7 bits from "far"
    assert dedup.check("q", "p3", _hex(BASE)) == Duplicate(NEAR_DUPLICATE, "near", 2)


@pytest.mark.parametrize("order", [("x", "y"), ("y", "x")])
def test_distance_ties_go_to_the_image_kept_first(order):
    hashes = {"x": _flip_bits(BASE, 2, start=40), "y": _flip_bits(BASE, 2, start=20)}
    dedup = Deduplicator(threshold=3)  # x and y are 4 bits apart: both kept
    for name in order:
        assert dedup.check(name, f"p-{name}", _hex(hashes[name])) is None
    assert dedup.check("q", "p-q", _hex(BASE)) == Duplicate(NEAR_DUPLICATE, order[0], 2)


def test_dropped_images_do_not_extend_a_chain():
    dedup = Deduplicator(threshold=4)
    assert dedup.check("a", "p-a", _hex(BASE)) is None
    assert dedup.check("b", "p-b", _hex(_flip_bits(BASE, 4))).of == "a"
    # 8 bits from "a", 4 from the dropped "b": kept.
    assert dedup.check("c", "p-c", _hex(_flip_bits(BASE, 8))) is None


def test_threshold_none_only_drops_exact_copies():
    dedup = Deduplicator(threshold=None)
    assert dedup.check("a", "p-a", _hex(BASE)) is None
    assert dedup.check("b", "p-b", _hex(BASE)) is None
    assert dedup.check("c", "p-a", _hex(BASE)).reason == EXACT_DUPLICATE


@pytest.mark.parametrize("threshold", [-1, 65])
def test_threshold_out_of_range_is_a_user_error(threshold):
    with pytest.raises(BluepriError, match="threshold"):
        Deduplicator(threshold=threshold)


def test_bk_tree_agrees_with_a_linear_scan():
    rng = np.random.default_rng(1)
    centres = [int(v) for v in rng.integers(0, 2**63, size=40)]
    hashes = []
    for _ in range(1500):
        centre = centres[int(rng.integers(0, len(centres)))]
        bits = rng.choice(64, size=int(rng.integers(0, 12)), replace=False)
        hashes.append(centre ^ sum(1 << int(bit) for bit in bits))
    threshold = 6
    dedup = Deduplicator(threshold=threshold)
    kept: list[tuple[str, int]] = []
    for index, value in enumerate(hashes):
        sample_id = f"s{index}"
        within = [
            ((kept_value ^ value).bit_count(), order, kept_id)
            for order, (kept_id, kept_value) in enumerate(kept)
            if (kept_value ^ value).bit_count() <= threshold
        ]
        expected = None
        if within:
            distance, _, of = min(within)
            expected = Duplicate(NEAR_DUPLICATE, of, distance)
        assert dedup.check(sample_id, f"px{index}", _hex(value)) == expected
        if expected is None:
            kept.append((sample_id, value))
    assert dedup.kept == len(kept)


def test_odd_corpus_duplicates_are_found_in_sorted_order(tmp_path):
    expected = build_odd_corpus(tmp_path)
    dedup = Deduplicator()
    outcomes = {}
    for name, reason in expected.items():
        decoded = decode_image((tmp_path / name).read_bytes())
        if not decoded.ok:
            continue
        image = decoded.image
        duplicate = dedup.check(name, pixel_sha256(image), perceptual_hash(image))
        outcomes[name] = None if duplicate is None else duplicate.reason
        assert reason == outcomes[name], name
    assert sorted(r for r in outcomes.values() if r) == [
        EXACT_DUPLICATE,
        NEAR_DUPLICATE,
        NEAR_DUPLICATE,
    ]
