"""The authorizer's memory of refused key hashes: bounded, and forgotten after its TTL."""

from functions.authorizer.app import RefusedHashes


def test_a_refused_hash_is_remembered_for_its_ttl_only():
    now = [100.0]
    refused = RefusedHashes(size=10, ttl_seconds=30, clock=lambda: now[0])
    refused.add("h1")

    assert "h1" in refused and "h2" not in refused
    now[0] = 129.9
    assert "h1" in refused
    now[0] = 130.0
    assert "h1" not in refused


def test_the_memory_is_bounded_and_drops_the_oldest_first():
    refused = RefusedHashes(size=3, ttl_seconds=30, clock=lambda: 0.0)
    for name in ["a", "b", "c", "d"]:
        refused.add(name)

    assert [name in refused for name in ["a", "b", "c", "d"]] == [False, True, True, True]
    refused.add("b")  # refused again: the newest now
    refused.add("e")
    assert [name in refused for name in ["b", "c", "d", "e"]] == [True, False, True, True]


def test_a_secret_refused_before_it_was_issued_works_within_thirty_seconds():
    # A caller trying the admin secret just before `OMS_ADMIN_API_KEY` set it is refused from memory
    # for a short while only, not for the warm container's life.
    now = [0.0]
    refused = RefusedHashes(clock=lambda: now[0])
    refused.add("h1")

    now[0] = 30.0
    assert "h1" not in refused
