"""A bench that could not finish says so in its own words, not as a bug of ours."""

from __future__ import annotations

import click
from click.testing import CliRunner

from bastionary.cli.common import Cli
from bastionary.cli.tools import _bench_failures_as_messages
from bastionary.tools.bench.options import BenchError


def group_with(failure: Exception) -> click.Group:
    group = Cli()

    @group.command()
    @_bench_failures_as_messages
    def bench() -> None:
        raise failure

    return group


def test_a_bench_that_could_not_finish_says_why_and_where_its_log_is():
    failure = BenchError("trial t0002: 4 events not counted in 30s; see /tmp/b/logs/worker-entitlements.log")
    result = CliRunner().invoke(group_with(failure), ["bench"])
    assert result.exit_code == 1
    assert result.output == (
        "Error: the bench did not finish: trial t0002: 4 events not counted in 30s;"
        " see /tmp/b/logs/worker-entitlements.log\n"
    )


def test_any_other_exception_is_still_reported_as_a_bug_of_ours():
    result = CliRunner().invoke(group_with(ZeroDivisionError("division by zero")), ["bench"])
    assert result.exit_code == 1
    assert "a bug of ours" in result.output
