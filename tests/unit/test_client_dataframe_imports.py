"""skip_dataframe_imports: the worker's processes never import pandas for clickhouse-connect,
and a process that already has it resolved keeps it (its query_df still works)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from clickhouse_connect.driver import options

from bastionary.storage.client import skip_dataframe_imports


@pytest.fixture(autouse=True)
def restored_options() -> Iterator[None]:
    """This process's resolution (pandas, None, or not yet) is put back after each test."""
    names = ("pd", "pd_time_test")
    saved = {name: vars(options)[name] for name in names if name in vars(options)}
    for name in names:
        vars(options).pop(name, None)
    yield
    for name in names:
        vars(options).pop(name, None)
    vars(options).update(saved)


def test_unresolved_pandas_is_declared_absent_without_importing_it() -> None:
    skip_dataframe_imports()
    assert options.pd is None and options.pd_time_test is None


def test_a_process_that_resolved_pandas_already_keeps_it() -> None:
    resolved = object()
    vars(options)["pd"] = resolved
    skip_dataframe_imports()
    assert options.pd is resolved
