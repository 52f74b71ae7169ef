"""The container's store of carried holds (gateway.money.carried): pure, no I/O."""

from __future__ import annotations

from decimal import Decimal as D

from gateway.money.carried import Carried, Standing

WHO = ("user-1", "key-1")


def put(store: Carried, who: tuple[str, str], standing: Standing) -> None:
    assert store.claim(who)
    store.opened(who, standing)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_hold_is_taken_once_and_only_by_a_request_it_covers() -> None:
    clock = Clock()
    store = Carried(clock=clock)
    put(store, WHO, Standing("hold_a", D("0.50"), "pro", usable_until=1020))
    assert store.take(WHO, D("0.51")) is None          # too small for this request: kept
    assert store.take(("user-1", "key-2"), D("0.1")) is None  # another key of the same user
    taken = store.take(WHO, D("0.50"))
    assert taken is not None and taken.request_id == "hold_a" and taken.tier == "pro"
    assert store.take(WHO, D("0.01")) is None          # gone: two requests never share one
    assert len(store) == 0


def test_a_hold_past_its_time_is_never_taken_and_is_dropped() -> None:
    clock = Clock()
    store = Carried(clock=clock)
    put(store, WHO, Standing("hold_old", D("1"), "free", usable_until=1020))
    put(store, WHO, Standing("hold_new", D("1"), "free", usable_until=1040))
    clock.now = 1020
    assert store.take(WHO, D("0.5")).request_id == "hold_new"  # type: ignore[union-attr]
    assert store.take(WHO, D("0.5")) is None
    assert store.drop(WHO, D("0.5")) == ["hold_old"]
    assert len(store) == 0 and store.drop(WHO, D("0.5")) == []


def test_drop_gives_back_the_holds_smaller_than_the_latest_request_and_keeps_the_rest() -> None:
    store = Carried(clock=Clock())
    put(store, WHO, Standing("hold_small", D("0.10"), "free", usable_until=2000))
    put(store, WHO, Standing("hold_big", D("0.90"), "free", usable_until=2000))
    assert store.drop(WHO, D("0.50")) == ["hold_small"]
    assert store.take(WHO, D("0.50")).request_id == "hold_big"  # type: ignore[union-attr]


def test_at_most_per_key_holds_counting_those_being_opened_by_concurrent_settles() -> None:
    store = Carried(per_key=2, clock=Clock())
    assert store.claim(WHO) and store.claim(WHO)  # two settles running at once
    assert not store.claim(WHO) and store.claim(("user-2", "key-9"))
    store.opened(WHO, None)  # one opened nothing (no room in the database, or it failed)
    assert store.claim(WHO)
    store.opened(WHO, Standing("hold_1", D("1"), "free", usable_until=2000))
    store.opened(WHO, Standing("hold_2", D("1"), "free", usable_until=2000))
    assert len(store) == 2 and not store.claim(WHO)
    assert store.take(WHO, D("1")) is not None and store.claim(WHO)


def test_many_users_through_one_container_forget_their_stale_holds() -> None:
    clock = Clock()
    store = Carried(clock=clock)
    for i in range(256):
        put(store, (f"user-{i}", "k"), Standing(f"hold_{i}", D("1"), "free", usable_until=1010))
    clock.now = 1011  # all stale (the database gives them back)
    put(store, WHO, Standing("hold_live", D("1"), "free", usable_until=1030))
    assert len(store) == 1 and store.take(WHO, D("1")).request_id == "hold_live"  # type: ignore[union-attr]


def test_no_hold_is_claimed_while_another_request_of_the_key_runs_in_this_container() -> None:
    store = Carried(clock=Clock())
    store.begin(WHO)
    store.begin(WHO)  # two requests of the key at once (a server with concurrency; never in Lambda)
    assert not store.claim(WHO)
    assert store.claim(("user-2", "key-9"))  # another key is not concerned
    store.end(WHO)
    assert store.claim(WHO)  # the last one running carries for the next
    store.end(WHO)
    store.end(WHO)  # an extra end never goes below zero
    assert store.claim(WHO)


def test_with_combined_statements_a_hold_is_claimed_while_others_of_the_key_run() -> None:
    store = Carried(per_key=2, clock=Clock())
    store.begin(WHO)
    store.begin(WHO)
    assert not store.claim(WHO)
    assert store.claim(WHO, concurrent=True) and store.claim(WHO, concurrent=True)
    assert not store.claim(WHO, concurrent=True)  # the per-key bound still counts settles opening one


def test_a_hold_id_is_hold_and_128_random_bits_in_hex() -> None:
    from gateway.chat.service import new_hold_id
    from gateway.money.ledger import _ID

    ids = {new_hold_id() for _ in range(1000)}
    assert len(ids) == 1000
    for i in ids:
        assert i.startswith("hold_") and len(i) == 37 and int(i[5:], 16) >= 0 and i == i.lower()
        assert _ID.fullmatch(i)  # a request id the statements take


def test_drop_keeps_the_order_of_what_it_keeps_and_gives_back_the_rest_in_order() -> None:
    clock = Clock()
    store = Carried(per_key=8, clock=clock)
    amounts = ["0.9", "0.1", "0.8", "0.2", "0.7", "0.7", "0.3", "0.95"]
    for i, amount in enumerate(amounts):
        put(store, WHO, Standing(f"hold_{i}", D(amount), "free", usable_until=2000 if i != 4 else 1010))
    clock.now = 1010  # hold_4 is past its time
    assert store.drop(WHO, D("0.5")) == ["hold_1", "hold_3", "hold_4", "hold_6"]
    assert store.drop(WHO, D("0.5")) == []  # nothing left to give back: the kept ones stay
    assert [store.take(WHO, D("0.5")).request_id for _ in range(4)] == [  # type: ignore[union-attr]
        "hold_0", "hold_2", "hold_5", "hold_7"]
    assert len(store) == 0 and store.take(WHO, D("0")) is None
