"""API keys: scopes, customer limits, hashed storage, and a key file that changes under a
running worker."""

from __future__ import annotations

import os

import pytest
import structlog.testing
from hypothesis import given
from hypothesis import strategies as st
from pydantic import SecretStr

from bastionary.apikeys import AuthError, KeyFileError, KeyRing, key_digest, new_key, read_key_file


def write_keys(path, *entries) -> None:
    path.write_text("".join(entry.model_dump_json() + "\n" for entry in entries))


def test_a_new_key_is_stored_only_as_its_digest(tmp_path):
    key, entry = new_key("portal", ["read", "ingest", "read"], "cust-1")
    assert key.startswith("bk_") and len(key) > 40
    assert entry.sha256 == key_digest(key) and key not in entry.model_dump_json()
    assert entry.scopes == ["ingest", "read"]
    write_keys(tmp_path / "keys", entry)
    found = KeyRing([], tmp_path / "keys").authenticate(f"Bearer {key}")
    assert (found.name, found.customer) == ("portal", "cust-1")
    assert found.allows("read") and found.allows("ingest") and not found.allows("write")
    assert found.may_see("cust-1") and not found.may_see("cust-2") and not found.may_see(None)


def test_plain_keys_are_admin_keys():
    key = KeyRing([SecretStr("plain-key")]).authenticate("Bearer plain-key")
    assert all(key.allows(scope) for scope in ("ingest", "read", "write", "admin")) and key.may_see(None)


@pytest.mark.parametrize(
    ("header", "status"),
    [(None, 401), ("", 401), ("Basic abc", 401), ("Bearer", 401), ("Bearer a b", 401), ("Bearer nope", 403)],
)
def test_refusals(header, status):
    with pytest.raises(AuthError) as refused:
        KeyRing([SecretStr("plain-key")]).authenticate(header)
    assert refused.value.status == status


def test_no_keys_at_all_refuses_everyone():
    with pytest.raises(AuthError) as refused:
        KeyRing([]).authenticate("Bearer anything")
    assert refused.value.status == 403


def test_the_file_is_read_again_when_it_changes_and_kept_when_it_turns_bad(tmp_path):
    path = tmp_path / "keys"
    old_key, old = new_key("old", ["read"])
    write_keys(path, old)
    ring = KeyRing([], path)
    assert ring.authenticate(f"Bearer {old_key}").name == "old"
    new_key_text, new = new_key("new", ["write"])
    write_keys(path, new)  # rotation: the old line is gone
    os.utime(path, ns=(1, 1))  # a change the clock's resolution cannot hide
    assert ring.authenticate(f"Bearer {new_key_text}").name == "new"
    with pytest.raises(AuthError):
        ring.authenticate(f"Bearer {old_key}")
    path.write_text("{not json\n")
    os.utime(path, ns=(2, 2))
    assert ring.authenticate(f"Bearer {new_key_text}").name == "new"  # the last good keys stay


@pytest.mark.parametrize(
    "line",
    [
        "{",
        '{"name": "a", "sha256": "xyz", "scopes": ["read"]}',
        '{"name": "a", "sha256": "' + "0" * 64 + '", "scopes": []}',
        '{"name": "a", "sha256": "' + "0" * 64 + '", "scopes": ["root"]}',
        '{"name": "a", "sha256": "' + "0" * 64 + '", "scopes": ["read"], "extra": 1}',
    ],
)
def test_a_bad_key_file_stops_the_start(tmp_path, line):
    (tmp_path / "keys").write_text(line + "\n")
    with pytest.raises(KeyFileError, match=":1: not a key entry"):
        KeyRing([], tmp_path / "keys")


def test_two_keys_with_one_name_are_refused(tmp_path):
    _, first = new_key("same", ["read"])
    _, second = new_key("same", ["write"])
    write_keys(tmp_path / "keys", first, second)
    with pytest.raises(KeyFileError, match="a second key named"):
        read_key_file(tmp_path / "keys")


@given(st.text(max_size=300))
def test_any_header_is_a_key_or_an_auth_error(header):
    ring = KeyRing([SecretStr("plain-key")])
    try:
        ring.authenticate(header)
    except AuthError as refused:
        assert refused.status in (401, 403)


def test_a_missing_key_file_is_one_clear_error(tmp_path):
    with pytest.raises(KeyFileError, match=r"BASTIONARY_API_KEY_FILE .*No such file"):
        KeyRing([], tmp_path / "absent")


@given(st.lists(st.one_of(st.text(max_size=120), st.sampled_from(['{"name": "a"}', "# note", "", "null", "[]"]))))
def test_any_key_file_is_keys_or_one_clear_error(lines):
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "keys"
        path.write_text("\n".join(lines), encoding="utf-8", errors="surrogatepass")
        try:
            entries = read_key_file(path)
        except KeyFileError as error:
            assert str(error).startswith(str(path))
        else:
            assert all(entry.sha256 and entry.scopes for entry in entries)


def test_a_key_file_that_is_not_text_is_one_clear_error(tmp_path):
    (tmp_path / "keys").write_bytes(b'{"name": "\xff"}\n')
    with pytest.raises(KeyFileError, match="not UTF-8"):
        KeyRing([], tmp_path / "keys")


@pytest.mark.parametrize("customer", ["c" * 256, "acme corp", "a+b@example.com"])
def test_a_key_may_name_any_customer_the_routes_accept(tmp_path, customer):
    _, entry = new_key("portal", ["read"], customer)
    write_keys(tmp_path / "keys", entry)
    [found] = read_key_file(tmp_path / "keys")
    assert found.customer == customer


@pytest.mark.parametrize("customer", ["", "c" * 257, "a\nb", "tab\there"])
def test_a_key_may_not_name_a_customer_id_the_routes_refuse(customer):
    with pytest.raises(ValueError, match="customer ids are 1-256 characters"):
        new_key("portal", ["read"], customer)


def test_one_key_given_twice_is_refused(tmp_path):
    """Two lines with one digest: only one of their scopes and customers could hold (the last,
    silently, before)."""
    _, first = new_key("first", ["read"])
    second = first.model_copy(update={"name": "second", "scopes": ["admin"]})
    write_keys(tmp_path / "keys", first, second)
    with pytest.raises(KeyFileError, match=r":2: the same key \(sha256\) as line 1"):
        read_key_file(tmp_path / "keys")


def test_a_key_file_that_turns_bad_is_logged_once_while_the_old_keys_stay(tmp_path):
    """The edit did not take, so a key it meant to revoke still works: the operator is told."""
    path = tmp_path / "keys"
    key, entry = new_key("old", ["read"])
    write_keys(path, entry)
    ring = KeyRing([], path)
    path.write_text("{not json\n")
    os.utime(path, ns=(1, 1))
    with structlog.testing.capture_logs() as logs:
        for _ in range(3):
            assert ring.authenticate(f"Bearer {key}").name == "old"
    assert [(e["log_level"], e["event"]) for e in logs] == [
        ("error", "API key file not read; the keys read before stay in force")
    ]
    assert ":1: not a key entry" in logs[0]["error"]
