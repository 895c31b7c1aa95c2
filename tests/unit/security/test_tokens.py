"""Bearer tokens: shown once, stored as hashes, parsed strictly, reloaded without losing the good ones."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ringkv.security import tokens
from ringkv.security.tokens import Entry, TokenStore


def test_a_token_is_random_prefixed_and_never_in_the_file(tmp_path: Path) -> None:
    a, b = tokens.new_token(), tokens.new_token()
    assert a != b and a.startswith("rkv_") and len(a) == 47
    text = tokens.render([Entry("app", "write", tokens.digest(a))])
    assert a not in text and a[4:] not in text
    store = TokenStore(None, tokens.parse(text))
    assert store.lookup(a) == Entry("app", "write", tokens.digest(a))
    assert store.lookup(b) is None and store.lookup("") is None and store.lookup("x" * 10_000) is None


@given(st.lists(st.tuples(st.from_regex(r"[A-Za-z0-9._-]{1,20}", fullmatch=True),
                          st.sampled_from(("read", "write", "admin"))), unique_by=lambda t: t[0]))
def test_render_and_parse_round_trip(rows: list[tuple[str, str]]) -> None:
    entries = [Entry(name, role, tokens.digest(name)) for name, role in rows]
    assert tokens.parse(tokens.render(entries)) == entries


@pytest.mark.parametrize("line", [
    "app write",                                  # no hash
    "app root sha256:" + "0" * 64,                # unknown role
    "app write md5:" + "0" * 32,                  # unknown hash
    "app write sha256:" + "0" * 63,               # short
    "a/b write sha256:" + "0" * 64,               # bad name
    "app write sha256:" + "0" * 64 + " extra",
])
def test_a_malformed_line_is_named(line: str) -> None:
    with pytest.raises(ValueError, match="line 2"):
        tokens.parse("# comment\n" + line + "\n")


def test_a_name_twice_is_refused() -> None:
    with pytest.raises(ValueError, match="twice"):
        tokens.parse(f"a read {tokens.digest('x')}\na admin {tokens.digest('y')}\n")


def test_reload_takes_changes_and_fails_closed(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    first, second = tokens.new_token(), tokens.new_token()
    path.write_text(tokens.render([Entry("one", "read", tokens.digest(first))]))
    store = TokenStore(path)
    assert store.lookup(first) is not None and not store.reload()
    path.write_text(tokens.render([Entry("two", "admin", tokens.digest(second))]))  # rotation: one revoked
    assert store.reload()
    assert store.lookup(first) is None and store.lookup(second) is not None
    third = tokens.new_token()
    path.write_text(tokens.render([Entry("two", "admin", tokens.digest(second))]) + "garbage\n"
                    + Entry("three", "read", tokens.digest(third)).line() + "\n")
    assert store.reload() and store.reload_failures == 1
    assert store.lookup(second) is not None and store.lookup(third) is not None  # a typo locks out only itself
    path.write_text("three\n")  # revoking "two" in the same edit as a typo: revoked all the same (fail closed)
    store.reload()
    assert store.lookup(second) is None and store.lookup(third) is None
    path.unlink()
    assert not store.reload() and len(store) == 0  # no file: no token
    assert store.lookup("rkv_\udcff" + "x" * 40) is None  # not ASCII: refused, never a 500
