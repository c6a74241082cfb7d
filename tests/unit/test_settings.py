"""Runtime configuration from BASTIONARY_* variables, validated all at once."""

from __future__ import annotations

import json
import re
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bastionary.settings import ConfigError, Settings, format_iso_duration, load_settings, parse_iso_duration
from tests.unit.env_helpers import config_error, without_settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    """No BASTIONARY_* variable from the outer environment leaks in; cwd is a scratch dir."""
    without_settings(monkeypatch)
    monkeypatch.chdir(tmp_path)


# --- defaults and environment ----------------------------------------------------------


def test_defaults(tmp_path: Path):
    s = load_settings()
    assert isinstance(s, Settings)
    assert s.kafka_bootstrap is None
    assert s.embedded_clickhouse
    assert s.clickhouse_url() == f"chdb://{tmp_path.resolve() / '.bastionary' / 'clickhouse'}"
    assert s.database == "bastionary"
    assert s.dedupe_horizon == timedelta(days=35)
    assert s.max_future_skew == timedelta(minutes=5)
    assert s.flush_interval == timedelta(milliseconds=250)
    assert s.max_record_bytes == 1_048_576
    assert s.data_path == (tmp_path / ".bastionary").resolve()
    assert s.clickhouse_compression == "lz4"


def test_clickhouse_compression_is_lz4_or_none(monkeypatch):
    monkeypatch.setenv("BASTIONARY_CLICKHOUSE_COMPRESSION", "none")
    assert load_settings().clickhouse_compression == "none"
    assert "BASTIONARY_CLICKHOUSE_COMPRESSION" in config_error(monkeypatch, CLICKHOUSE_COMPRESSION="gzip")


def test_every_setting_is_in_the_readmes_table():
    """The README's table of variables is where operators look: no setting may be missing."""
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    table = readme.split("| variable | default | meaning |", 1)[1].split("\n\n", 1)[0]
    rows = [row for row in table.splitlines() if row.startswith("| `")]
    documented = {name for row in rows for name in re.findall(r"`([A-Z0-9_]+)`", row.split("|")[1])}
    assert sorted(name.upper() for name in Settings.model_fields if name.upper() not in documented) == []


def test_environment_variables_are_read(monkeypatch):
    monkeypatch.setenv("BASTIONARY_DEDUPE_HORIZON", "P7D")
    monkeypatch.setenv("BASTIONARY_MAX_FUTURE_SKEW", "PT30S")
    monkeypatch.setenv("BASTIONARY_FLUSH_INTERVAL", "pt0.5s")
    monkeypatch.setenv("BASTIONARY_MAX_RECORD_BYTES", "2048")
    monkeypatch.setenv("BASTIONARY_KAFKA_BOOTSTRAP", "kafka-1:9092,kafka-2:9092")
    monkeypatch.setenv("BASTIONARY_TOPIC_PREFIX", "prod.billing-v1_")
    monkeypatch.setenv("BASTIONARY_LOG_LEVEL", "DEBUG")
    s = load_settings()
    assert s.dedupe_horizon == timedelta(days=7)
    assert s.max_future_skew == timedelta(seconds=30)
    assert s.flush_interval == timedelta(seconds=0.5)
    assert s.max_record_bytes == 2048
    assert s.kafka_bootstrap
    assert s.topic_prefix == "prod.billing-v1_"
    assert s.log_level == "DEBUG"


def test_overrides_win_over_the_environment(monkeypatch):
    monkeypatch.setenv("BASTIONARY_USAGE_PARTITIONS", "8")
    assert load_settings(usage_partitions=2).usage_partitions == 2
    assert load_settings().usage_partitions == 8


def test_variables_without_the_prefix_are_ignored(monkeypatch):
    monkeypatch.setenv("DEDUPE_HORIZON", "nonsense")
    assert load_settings().dedupe_horizon == timedelta(days=35)


def test_a_misspelled_variable_fails_naming_the_closest_setting(monkeypatch):
    message = config_error(monkeypatch, DEDUP_HORIZON="P7D", FLUSH_INTERVALL="PT1S", NOT_A_SETTING="x")
    assert "BASTIONARY_DEDUP_HORIZON: not a setting; did you mean BASTIONARY_DEDUPE_HORIZON?" in message
    assert "BASTIONARY_FLUSH_INTERVALL: not a setting; did you mean BASTIONARY_FLUSH_INTERVAL?" in message
    assert "BASTIONARY_NOT_A_SETTING: not a setting" in message


def test_the_test_suites_own_variables_are_not_settings_and_not_errors(monkeypatch):
    monkeypatch.setenv("BASTIONARY_TEST_KAFKA_BOOTSTRAP", "localhost:9092")
    assert load_settings().kafka_bootstrap is None


@pytest.mark.parametrize(
    "name", ["WEBHOOK_SECRET", "API_KEYS", "SMTP_PASSWORD", "QUERY_READER_PASSWORD", "QUERY_WRITER_PASSWORD"]
)
def test_empty_secrets_are_refused_at_start_up(monkeypatch, name):
    for empty in ("", "  ", ","):
        message = config_error(monkeypatch, **{name: empty})
        assert f"BASTIONARY_{name}" in message and "empty" in message


def test_a_short_webhook_secret_is_refused(monkeypatch):
    assert "16 bytes" in config_error(monkeypatch, WEBHOOK_SECRET="short")
    assert load_settings(webhook_secret="whsec_" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldY").webhook_secret


@given(st.dictionaries(st.from_regex(r"BASTIONARY_[A-Z_]{1,30}", fullmatch=True), st.text(max_size=5), max_size=5))
def test_unknown_variable_check_never_raises(environ):
    from bastionary.settings import unknown_variables

    for problem in unknown_variables(environ):
        assert problem.startswith("BASTIONARY_") and "not a setting" in problem


def test_a_single_bad_variable_is_named(monkeypatch):
    message = config_error(monkeypatch, DEDUPE_HORIZON="P1M")
    assert message.startswith("invalid configuration:")
    assert "BASTIONARY_DEDUPE_HORIZON" in message
    assert "'P1M'" in message


def test_every_bad_variable_is_reported_at_once(monkeypatch):
    bad = {
        "DEDUPE_HORIZON": "35 days",
        "MAX_FUTURE_SKEW": "P1Y",
        "FLUSH_INTERVAL": "soon",
        "MAX_RECORD_BYTES": "0",
        "USAGE_PARTITIONS": "many",
        "WEB_PORT": "70000",
        "QUERY_PORT": "-1",
        "TOPIC_PREFIX": "has space",
        "CLICKHOUSE_DSN": "ftp://host/db",
        "LOG_LEVEL": "LOUD",
        "LOG_FORMAT": "xml",
    }
    message = config_error(monkeypatch, **bad)
    reported = [line.strip().split(":")[0] for line in message.splitlines()[1:]]
    assert sorted(reported) == sorted(f"BASTIONARY_{name}" for name in bad)


def test_config_error_never_echoes_a_dsn_secret(monkeypatch):
    message = config_error(monkeypatch, CLICKHOUSE_DSN="ftp://user:hunter2@host/db")
    assert "BASTIONARY_CLICKHOUSE_DSN" in message
    assert "hunter2" not in message


@pytest.mark.parametrize("dsn", ["chdb:///var/lib/ch", "http://ch:8123", "https://u:p@ch:8443/db"])
def test_accepted_dsn_schemes(dsn):
    s = load_settings(clickhouse_dsn=dsn)
    assert s.clickhouse_url() == dsn
    assert s.embedded_clickhouse == dsn.startswith("chdb:")


# --- database resolution ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("dsn", "database"),
    [
        ("http://u:p@ch.example:8123/metering", "metering"),
        ("https://ch.example:8443/metering/", "metering"),
        ("http://ch.example:8123/metering/extra", "metering"),
        ("http://ch.example:8123/", "bastionary"),
        ("http://ch.example:8123", "bastionary"),
        ("chdb:///var/lib/clickhouse", "bastionary"),  # a chdb path is a directory, not a database
    ],
)
def test_database_from_the_dsn(dsn, database):
    assert load_settings(clickhouse_dsn=dsn).database == database


def test_explicit_database_wins(monkeypatch):
    monkeypatch.setenv("BASTIONARY_CLICKHOUSE_DSN", "http://ch:8123/from_dsn")
    monkeypatch.setenv("BASTIONARY_CLICKHOUSE_DATABASE", "explicit")
    assert load_settings().database == "explicit"


# --- redacted --------------------------------------------------------------------------


def test_redacted_masks_the_dsn_password_and_query_passwords(monkeypatch):
    monkeypatch.setenv("BASTIONARY_CLICKHOUSE_DSN", "https://biller:s3cr3t-pw@ch.example:8443/metering?secure=1")
    monkeypatch.setenv("BASTIONARY_QUERY_READER_PASSWORD", "reader-pw")
    monkeypatch.setenv("BASTIONARY_QUERY_WRITER_PASSWORD", "writer-pw")
    out = load_settings().redacted()
    assert out["clickhouse_dsn"] == "https://biller:***@ch.example:8443/metering?secure=1"
    assert out["query_reader_password"] == "***"
    assert out["query_writer_password"] == "***"
    text = json.dumps(out)  # it must also be JSON-serialisable
    for secret in ("s3cr3t-pw", "reader-pw", "writer-pw"):
        assert secret not in text


def test_the_reader_dsn_is_a_server_and_is_masked(monkeypatch):
    monkeypatch.setenv("BASTIONARY_CLICKHOUSE_READER_DSN", "https://analyst:r34d-pw@ch.example:8443/metering")
    out = load_settings().redacted()
    assert out["clickhouse_reader_dsn"] == "https://analyst:***@ch.example:8443/metering"
    assert "r34d-pw" not in json.dumps(out)
    message = config_error(monkeypatch, CLICKHOUSE_READER_DSN="chdb:///tmp/x")
    assert "BASTIONARY_CLICKHOUSE_READER_DSN" in message and "http" in message


def test_redacted_keeps_dsns_without_a_password_and_renders_durations(monkeypatch):
    monkeypatch.setenv("BASTIONARY_DEDUPE_HORIZON", "P7D")
    out = load_settings(clickhouse_dsn="http://ch.example:8123/db").redacted()
    assert out["clickhouse_dsn"] == "http://ch.example:8123/db"
    assert out["query_reader_password"] is None
    assert (out["dedupe_horizon"], out["max_future_skew"], out["flush_interval"]) == ("P7D", "PT5M", "PT0.25S")


def test_redacted_shows_the_effective_chdb_dsn(tmp_path: Path):
    out = load_settings().redacted()
    assert out["clickhouse_dsn"] == f"chdb://{tmp_path.resolve() / '.bastionary' / 'clickhouse'}"


def test_redacted_keeps_ipv6_hosts_valid():
    out = load_settings(clickhouse_dsn="http://u:pw@[::1]:8123/db").redacted()
    assert out["clickhouse_dsn"] == "http://u:***@[::1]:8123/db"


# --- ISO 8601 durations ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("P35D", timedelta(days=35)),
        ("P7D", timedelta(days=7)),
        ("p7d", timedelta(days=7)),
        (" PT5M ", timedelta(minutes=5)),
        ("P1W", timedelta(weeks=1)),
        ("P1W2D", timedelta(days=9)),
        ("PT90M", timedelta(minutes=90)),
        ("P1DT2H3M4S", timedelta(days=1, hours=2, minutes=3, seconds=4)),
        ("PT0.25S", timedelta(milliseconds=250)),
        ("PT0S", timedelta(0)),
    ],
)
def test_parse_iso_duration(text, expected):
    assert parse_iso_duration(text) == expected


def test_parse_iso_duration_passes_timedeltas_and_numbers_through():
    assert parse_iso_duration(timedelta(hours=1)) == timedelta(hours=1)
    assert parse_iso_duration(90) == timedelta(seconds=90)
    assert parse_iso_duration(0.5) == timedelta(seconds=0.5)


@pytest.mark.parametrize(
    "text", ["", "P", "PT", "P1DT", "P1M", "P1Y", "P1Y2M", "7D", "P-1D", "P1.5D", "PT1H30", "PT5M30", "1 day"]
)
def test_parse_iso_duration_rejects_non_fixed_or_malformed_durations(text):
    with pytest.raises(ValueError, match="not a fixed ISO 8601 duration"):
        parse_iso_duration(text)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (timedelta(days=35), "P35D"),
        (timedelta(minutes=5), "PT5M"),
        (timedelta(milliseconds=250), "PT0.25S"),
        (timedelta(0), "PT0S"),
        (timedelta(weeks=1), "P7D"),
        (timedelta(hours=25), "P1DT1H"),
        (timedelta(days=1, seconds=1.5), "P1DT1.5S"),
        (timedelta(hours=1, minutes=2, seconds=3), "PT1H2M3S"),
    ],
)
def test_format_iso_duration(value, text):
    assert format_iso_duration(value) == text


MILLISECOND = timedelta(milliseconds=1)
durations_ms = st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=3650)).map(lambda d: d - d % MILLISECOND)


@settings(database=None)
@given(durations_ms)
def test_format_then_parse_round_trips_at_millisecond_resolution(value):
    assert parse_iso_duration(format_iso_duration(value)) == value


@pytest.mark.parametrize(
    "value",
    [timedelta(seconds=59, microseconds=999_999), timedelta(seconds=12, microseconds=345_678)],
    ids=["rounds-up-to-PT60S", "loses-microseconds"],
)
def test_format_then_parse_round_trips_microseconds(value):
    assert parse_iso_duration(format_iso_duration(value)) == value


def test_dunning_and_api_settings():
    from bastionary.settings import ConfigError, load_settings

    with pytest.raises(ConfigError, match="WEBHOOK_SECRET"):
        load_settings(webhook_url="https://hooks.example.com/dunning")
    with pytest.raises(ConfigError, match="BASTIONARY_CLOCK"):
        load_settings(clock="tomorrow")
    settings = load_settings(
        webhook_url="https://hooks.example.com/x",
        webhook_secret="s3cret-of-sixteen-bytes",
        api_keys=" a, b ,",
        smtp_password="pw",
    )
    assert [k.get_secret_value() for k in settings.api_key_list] == ["a", "b"]
    shown = settings.redacted()
    assert shown["webhook_secret"] == shown["smtp_password"] == shown["api_keys"] == "***"
    assert "s3cret" not in str(shown)


# --- durations that must be more than zero, and settings that must agree ------------------


@pytest.mark.parametrize(
    "name",
    [
        "DEDUPE_HORIZON",
        "FLUSH_INTERVAL",
        "LOG_CHECK_INTERVAL",
        "DEDUPE_PURGE_INTERVAL",
        "STALL_TIMEOUT",
        "KAFKA_SESSION_TIMEOUT",
        "QUERY_TIMEOUT",
        "RATING_INTERVAL",
        "DUNNING_INTERVAL",
        "WEBHOOK_TIMEOUT",
        "WEBHOOK_BACKOFF",
        "WEBHOOK_BACKOFF_CAP",
    ],
)
@pytest.mark.parametrize("zero", ["PT0S", "P0D", "PT0.0000001S"])  # the last is below a microsecond: zero
def test_a_zero_duration_is_refused_where_it_would_mean_no_limit(monkeypatch, name, zero):
    message = config_error(monkeypatch, **{name: zero})
    assert re.search(rf"BASTIONARY_{name}: Value error, must be (more than zero|at least PT1S)", message)


@pytest.mark.parametrize("name", ["QUERY_TIMEOUT", "DEDUPE_HORIZON"])
def test_durations_read_as_whole_seconds_are_at_least_one(monkeypatch, name):
    # 0.5 s would be 0 s to the reader of whole seconds: no timeout, or no horizon.
    assert f"BASTIONARY_{name}: Value error, must be at least PT1S" in config_error(monkeypatch, **{name: "PT0.5S"})
    monkeypatch.setenv(f"BASTIONARY_{name}", "PT1S")
    assert getattr(load_settings(), name.lower()) == timedelta(seconds=1)


def test_zero_stays_valid_where_it_means_none(monkeypatch):
    monkeypatch.setenv("BASTIONARY_MAX_FUTURE_SKEW", "PT0S")
    monkeypatch.setenv("BASTIONARY_RATING_GRACE", "PT0S")
    settings = load_settings()
    assert settings.max_future_skew == settings.rating_grace == timedelta(0)


def test_the_test_suites_short_durations_stay_valid(monkeypatch):
    for name, value in {"WEBHOOK_BACKOFF": "PT0.1S", "DUNNING_INTERVAL": "PT0.5S", "FLUSH_INTERVAL": "PT0.2S"}.items():
        monkeypatch.setenv(f"BASTIONARY_{name}", value)
    assert load_settings().webhook_backoff == timedelta(seconds=0.1)


def test_the_backoff_cap_is_no_shorter_than_the_first_delay(monkeypatch):
    message = config_error(monkeypatch, WEBHOOK_BACKOFF="PT60S", WEBHOOK_BACKOFF_CAP="PT30S")
    assert "WEBHOOK_BACKOFF_CAP (PT30S) is shorter than WEBHOOK_BACKOFF (PT1M)" in message
    monkeypatch.setenv("BASTIONARY_WEBHOOK_BACKOFF_CAP", "PT60S")
    assert load_settings().webhook_backoff_cap == timedelta(seconds=60)


def test_starttls_and_implicit_tls_together_are_refused(monkeypatch):
    message = config_error(monkeypatch, SMTP_HOST="mail.example.com", SMTP_STARTTLS="true", SMTP_TLS="true")
    assert "SMTP_STARTTLS and SMTP_TLS are both true: choose one" in message
    monkeypatch.setenv("BASTIONARY_SMTP_STARTTLS", "false")
    assert load_settings().smtp_tls


def test_disagreeing_settings_are_each_reported_on_a_line_of_their_own(monkeypatch):
    message = config_error(
        monkeypatch,
        WEBHOOK_URL="https://hooks.example.com/x",
        SMTP_STARTTLS="true",
        SMTP_TLS="true",
        FLUSH_PROCESSES="2",
    )
    lines = message.splitlines()[1:]
    assert lines == [
        "  WEBHOOK_URL is set without WEBHOOK_SECRET: notices must be signed",
        f"  {lines[1].strip()}",
        "  FLUSH_PROCESSES above 1 needs FLUSH_PROCESS=true: without it the worker flushes itself",
    ]
    assert lines[1].strip().startswith("SMTP_STARTTLS and SMTP_TLS are both true")
    assert "BASTIONARY_:" not in message and "Value error" not in message


SETTING_NAMES = sorted(f"BASTIONARY_{name.upper()}" for name in Settings.model_fields)
HOSTILE_TEXT = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["0", "-1", "PT0S", "P99999999999D", "1e309", "nan", "true", "[]", "{}", "http://", "\x00"]),
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(SETTING_NAMES), HOSTILE_TEXT, min_size=1, max_size=4))
def test_any_values_of_the_settings_load_or_are_one_config_error(environ):
    """Whatever the environment holds, start-up reads settings or fails with the one error
    the CLI prints as a line (never a traceback from pydantic, a parser or a cross-check)."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in environ.items():
            if "\x00" in value:
                continue  # no process environment can hold a NUL
            patch.setenv(name, value)
        try:
            load_settings()
        except ConfigError as exc:
            assert str(exc).startswith("invalid configuration:")
