"""skip_numpy_and_pandas_imports: the worker's processes never import pandas or numpy for
clickhouse-connect, and a process that already has one resolved (or imported) keeps it (its
query_df and query_np still work)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest
from clickhouse_connect.driver import options

from bastionary.storage.client import skip_numpy_and_pandas_imports


@pytest.fixture(autouse=True)
def restored_options() -> Iterator[None]:
    """This process's resolution (the module, None, or not yet) is put back after each test."""
    names = ("pd", "pd_time_test", "np")
    saved = {name: vars(options)[name] for name in names if name in vars(options)}
    for name in names:
        vars(options).pop(name, None)
    yield
    for name in names:
        vars(options).pop(name, None)
    vars(options).update(saved)


def test_unresolved_pandas_is_declared_absent_without_importing_it() -> None:
    skip_numpy_and_pandas_imports()
    assert options.pd is None and options.pd_time_test is None


def test_a_process_that_resolved_pandas_already_keeps_it() -> None:
    resolved = object()
    vars(options)["pd"] = resolved
    skip_numpy_and_pandas_imports()
    assert options.pd is resolved


def test_a_process_that_resolved_numpy_already_keeps_it() -> None:
    resolved = object()
    vars(options)["np"] = resolved
    skip_numpy_and_pandas_imports()
    assert options.np is resolved


def test_an_insert_imports_neither_numpy_nor_pandas_once_they_are_skipped() -> None:
    # A fresh interpreter, as a worker's process starts: the client's insert context asks
    # options.np and options.pd about the rows, which imports numpy, pandas and pyarrow
    # when nothing was skipped (checked by hand with the skip left out).
    script = (
        "import sys\n"
        "from clickhouse_connect.driver import options\n"
        "from clickhouse_connect.datatypes.registry import get_from_name\n"
        "from clickhouse_connect.driver.insert import InsertContext\n"
        "from bastionary.storage.client import skip_numpy_and_pandas_imports\n"
        "skip_numpy_and_pandas_imports()\n"
        "InsertContext('t', ['a'], [get_from_name('UInt8')], data=[(1,)])\n"
        "print(sorted(m for m in ('numpy', 'pandas', 'pyarrow') if m in sys.modules), options.np, options.pd)\n"
    )
    shown = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert shown.split() == ["[]", "None", "None"]
