"""The chunked availability profile answers every query like the plain one."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from skyport.timetable import profile as profile_module
from skyport.timetable.profile import CHUNK, AvailabilityProfile
from tests.unit.timetable.reference_profile import ReferenceProfile

NOW = 100.0
CAPACITY = 12

releases = st.lists(
    st.tuples(st.integers(0, 400).map(float), st.integers(1, 4)),
    max_size=3 * CHUNK,  # enough breakpoints for several chunks and splits
)
queries = st.lists(
    st.tuples(
        st.integers(1, CAPACITY),  # procs
        st.integers(0, 120).map(float),  # duration
        st.one_of(st.none(), st.integers(60, 500).map(float)),  # not_before
        st.booleans(),  # reserve the answer?
    ),
    max_size=80,
)


@settings(max_examples=300, deadline=None)
@given(releases=releases, queries=queries, chunk=st.sampled_from([1, 2, 3, CHUNK]))
def test_chunked_profile_matches_the_reference(
    releases: list[tuple[float, int]],
    queries: list[tuple[int, float, float | None, bool]],
    chunk: int,
) -> None:
    # Small chunks make every search cross chunks and every few reservations split one.
    saved = profile_module.CHUNK
    profile_module.CHUNK = chunk
    try:
        _check(releases, queries)
    finally:
        profile_module.CHUNK = saved


def _check(
    releases: list[tuple[float, int]], queries: list[tuple[int, float, float | None, bool]]
) -> None:
    held = sum(procs for _, procs in releases)
    capacity = max(CAPACITY, held)
    free_now = capacity - held
    fast = AvailabilityProfile(NOW, capacity, free_now, releases)
    oracle = ReferenceProfile(NOW, capacity, free_now, releases)
    assert fast.steps() == oracle.steps()
    for procs, duration, not_before, take in queries:
        slot = fast.earliest(procs, duration, not_before)
        index = oracle.earliest(procs, duration, not_before)
        assert fast.start_of(slot) == oracle.times[index]
        assert fast.is_now(slot) == (index == 0)
        if take:
            fast.reserve(slot, duration, procs)
            oracle.reserve(index, duration, procs)
        assert fast.steps() == oracle.steps()
