"""One owner per part of a data dir: a second owner is refused with one line naming the first."""

from __future__ import annotations

import os

import pytest

from bastionary.locks import DataDirInUse, owning


def test_a_second_owner_of_a_part_is_refused_naming_the_first(tmp_path):
    with owning(tmp_path, "broker", command="bastionary run"):
        with pytest.raises(DataDirInUse) as refused, owning(tmp_path, "broker", command="bastionary run"):
            pass
        message = str(refused.value)
        assert f"pid {os.getpid()} (`bastionary run`" in message and "\n" not in message
        with owning(tmp_path, "worker-w2"):  # another part of the same directory is free
            pass
    with owning(tmp_path, "broker"):  # released when the owner is done
        pass


def test_a_refusal_partway_releases_what_was_taken(tmp_path):
    with owning(tmp_path, "clickhouse"), pytest.raises(DataDirInUse), owning(tmp_path, "broker", "clickhouse"):
        pass
    with owning(tmp_path, "broker"):
        pass
