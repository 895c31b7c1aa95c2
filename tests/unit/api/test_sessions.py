"""`SessionStore`: unguessable session ids mapping to the token they were opened with, expiry after the TTL
(explicit clocks), forgetting expired and closed sessions, and evicting the oldest past `max_sessions`."""

from __future__ import annotations

import re

from ringkv.api.sessions import SessionStore

URLSAFE = re.compile(r"^[A-Za-z0-9_-]{40,}$")


def test_open_gives_distinct_unguessable_ids() -> None:
    store = SessionStore()
    opened = [store.open(f"tok{k}", now=0.0) for k in range(200)]
    assert len(set(opened)) == 200 and len(store) == 200
    assert all(URLSAFE.match(sid) for sid in opened)
    assert store.open("tok0", now=0.0) not in opened  # not derived from the token
    assert [store.token(sid, now=1.0) for sid in opened] == [f"tok{k}" for k in range(200)]
    assert len(store) == 201


def test_the_same_token_gets_a_new_session_each_time() -> None:
    store = SessionStore()
    first, second = store.open("tok", now=0.0), store.open("tok", now=0.0)
    assert first != second and len(store) == 2
    store.close(first)
    assert store.token(first, now=1.0) is None and store.token(second, now=1.0) == "tok"


def test_expires_after_the_ttl_and_is_forgotten() -> None:
    store = SessionStore(ttl_s=60)
    old, young = store.open("a", now=100.0), store.open("b", now=130.0)
    assert store.token(old, now=159.9) == "a"
    assert store.token(old, now=160.0) is None  # exactly ttl later: gone
    assert len(store) == 1
    assert store.token(old, now=100.0) is None  # forgotten for good, not merely hidden
    assert store.token(young, now=189.9) == "b" and store.token(young, now=190.0) is None
    assert len(store) == 0


def test_close() -> None:
    store = SessionStore()
    sid = store.open("a", now=0.0)
    store.close(sid)
    assert store.token(sid, now=0.0) is None and len(store) == 0
    store.close(sid)  # closing twice, or an unknown id, is harmless
    store.close("nope")


def test_the_oldest_go_first_past_max_sessions() -> None:
    store = SessionStore(max_sessions=3)
    ids = [store.open(f"t{k}", now=float(k)) for k in range(5)]
    assert len(store) == 3
    assert [store.token(sid, now=10.0) for sid in ids] == [None, None, "t2", "t3", "t4"]
    assert store.token(ids[2], now=10.0) == "t2"  # a lookup does not make a session younger
    store.open("t5", now=11.0)
    assert store.token(ids[2], now=12.0) is None and store.token(ids[3], now=12.0) == "t3"


def test_unknown_id() -> None:
    store = SessionStore()
    store.open("a", now=0.0)
    assert store.token("", now=0.0) is None
    assert store.token("x" * 43, now=0.0) is None
    assert len(store) == 1
