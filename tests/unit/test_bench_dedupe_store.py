"""``bastionary bench --dedupe-store``: the dedupe cache alone. Only the shape of the result is
checked, never a figure: timings on a shared CI machine say nothing about the store."""

from __future__ import annotations

import json

from click.testing import CliRunner

from bastionary.cli.main import cli
from bastionary.tools.bench.dedupe_store import render_dedupe_store, run_dedupe_store


def test_the_store_is_filled_and_both_kinds_of_lookup_are_timed() -> None:
    result = run_dedupe_store(ids=30_000, lookups=2_000)
    assert result["ids"] == 30_000 and result["lookups"] == 2_000
    for figure in ("write_us_per_key", "stored_key_us_per_lookup", "new_key_us_per_lookup", "disk_bytes_per_id"):
        assert result[figure] > 0, figure
    text = render_dedupe_store(result)
    assert "30,000 ids written" in text and "stored key" in text and "new key" in text


def test_the_command_prints_json_and_refuses_a_server_option() -> None:
    runner = CliRunner()
    done = runner.invoke(cli, ["bench", "--dedupe-store", "--dedupe-ids", "5000", "--json"])
    assert done.exit_code == 0, done.output
    assert json.loads(done.output)["ids"] == 5_000
    refused = runner.invoke(cli, ["bench", "--dedupe-store", "--clickhouse-server"])
    assert refused.exit_code != 0 and "--clickhouse-server applies to" in refused.output
