"""Runtime configuration: read once from the environment, validated at start-up.

Every variable carries the prefix ``BASTIONARY_``. Nothing else in the package reads the
environment; code receives a :class:`Settings` instance instead.
"""

from __future__ import annotations

import difflib
import os
import re
import socket
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from pydantic import (
    BeforeValidator,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from bastionary.eventloop import EventLoop

_ISO_DURATION = re.compile(
    r"^P(?:(?P<weeks>\d+)W)?(?:(?P<days>\d+)D)?"
    r"(?:T(?:(?P<hours>\d+)H)?(?:(?P<minutes>\d+)M)?(?:(?P<seconds>\d+(?:\.\d+)?)S)?)?$"
)


def parse_iso_duration(value: Any) -> timedelta:
    """Parse a fixed-length ISO 8601 duration (weeks, days, hours, minutes, seconds).

    Months and years have no fixed length, so they are rejected here; billing intervals
    that need calendar months are parsed by the catalog instead.
    """
    if isinstance(value, timedelta):
        return value
    if isinstance(value, (int, float)):
        return timedelta(seconds=value)
    text = str(value).strip().upper()
    match = _ISO_DURATION.match(text)
    if not match or text in ("P", "PT") or text.endswith("T"):
        raise ValueError(f"not a fixed ISO 8601 duration (e.g. P35D, PT5M): {value!r}")
    parts = {k: float(v) for k, v in match.groupdict().items() if v}
    try:
        return timedelta(**parts)
    except OverflowError:
        raise ValueError(f"duration too large: {value!r}") from None


IsoDuration = Annotated[timedelta, BeforeValidator(parse_iso_duration)]


def format_iso_duration(value: timedelta) -> str:
    total = value.total_seconds()
    days, rest = divmod(int(total), 86400)
    hours, rest = divmod(rest, 3600)
    minutes, _ = divmod(rest, 60)
    secs = round(total - days * 86400 - hours * 3600 - minutes * 60, 6)
    secs_text = f"{secs:.6f}".rstrip("0").rstrip(".") if secs else ""
    time_part = "".join(f"{n}{u}" for n, u in ((hours, "H"), (minutes, "M")) if n) + (
        f"{secs_text}S" if secs_text else ""
    )
    return "P" + (f"{days}D" if days else "") + (f"T{time_part}" if time_part else "" if days else "T0S")


# The dedupe store keeps its horizon in whole seconds (int()): under one is zero, no dedupe.
# A query timeout under a second stops every real query, and one under a microsecond is a
# timedelta of zero, which ClickHouse's max_execution_time reads as no limit at all. The fetch
# wait goes to aiokafka in whole milliseconds: under one is zero, and an idle consumer then
# fetched without pause (67% of a core on the embedded broker, against 1% at PT0.1S).
_AT_LEAST = {
    "dedupe_horizon": timedelta(seconds=1),
    "query_timeout": timedelta(seconds=1),
    "kafka_fetch_max_wait": timedelta(milliseconds=1),
}

# Query values of a URL that carry a credential: clickhouse-connect takes a DSN's
# ``?access_token=`` as the user's token, and webhook receivers often take ``?token=``.
_CREDENTIAL_NAME = re.compile(r"pass|pwd|token|secret|key|auth|jwt|signature|sig$", re.IGNORECASE)


def url_without_credentials(url: str, mask_every_query_value: bool = False) -> str:
    """``url`` as it may be shown: its password and credential-like query values masked
    (every query value with ``mask_every_query_value``)."""
    parts = urlsplit(url)
    if parts.password:
        parts = parts._replace(netloc=f"{parts.username}:***@{parts.netloc.rpartition('@')[2]}")
    if parts.query:
        shown = [
            (name, "***" if mask_every_query_value or _CREDENTIAL_NAME.search(name) else value)
            for name, value in parse_qsl(parts.query, keep_blank_values=True)
        ]
        parts = parts._replace(query=urlencode(shown, safe="*"))
    return urlunsplit(parts)


def _is_ipv6_address(text: str) -> bool:
    try:
        socket.inet_pton(socket.AF_INET6, text)
    except (OSError, ValueError):
        return False
    return True


def _bootstrap_problem(bootstrap: str) -> str | None:
    """What is wrong with ``host:port[,host:port]``, as aiokafka reads it, or None."""
    for entry in (e.strip() for e in bootstrap.split(",")):
        if not entry:
            continue
        if "://" in entry:
            return "takes host:port, without a scheme (e.g. kafka:9092, not PLAINTEXT://kafka:9092)"
        if entry.startswith("["):  # [IPv6]:port
            host, bracket, rest = entry[1:].partition("]")
            port = rest[1:] if bracket and rest.startswith(":") else None
            if not host or not bracket or (rest and port is None):
                return f"{entry!r} is not [IPv6 address]:port"
        elif ":" not in entry or _is_ipv6_address(entry):  # aiokafka adds 9092
            continue
        else:
            host, _, port = entry.rpartition(":")
            if not host:
                return f"{entry!r} has no host"
        port = port.strip() if port is not None else None  # aiokafka's int() allows the spaces
        if port is not None and not (port.isascii() and port.isdigit() and 0 < int(port) <= 65535):
            return f"{entry!r}: the port must be a number from 1 to 65535"
    return None


def _http_url_with_host(url: str) -> bool:
    # "http://" alone passed, and every notice then failed for good as an invalid URL.
    try:
        parts = urlsplit(url)
        return parts.scheme in ("http", "https") and bool(parts.hostname) and (parts.port or 0) >= 0
    except ValueError:  # an unclosed [IPv6 bracket, a port that is no number
        return False


def _server_address_readable(dsn: SecretStr) -> None:
    """A server DSN's host and port, checked at start: a port that is no number failed only at
    the first connection ("Port could not be cast to integer value"), naming no setting, and
    "http://" alone connected to localhost. The messages never echo the DSN (its password)."""
    parts = urlsplit(dsn.get_secret_value())
    if parts.scheme not in ("http", "https"):
        return
    if not parts.hostname:
        raise ValueError("has no host, e.g. https://user:password@clickhouse.example.com:8443/db")
    try:
        _ = parts.port  # parsed when read: a bad one raises here
    except ValueError:
        raise ValueError("its port must be a number from 0 to 65535, e.g. http://user:password@host:8123/db") from None


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="BASTIONARY_", extra="ignore", validate_default=True)

    kafka_bootstrap: str | None = Field(
        default=None, description="Kafka bootstrap servers; unset starts the embedded broker."
    )
    clickhouse_dsn: SecretStr | None = Field(
        default=None,
        description="chdb:///dir for in-process ClickHouse, or http(s)://user:pass@host:8123/db.",
    )
    clickhouse_reader_dsn: SecretStr | None = Field(
        default=None,
        description="http(s)://user:pass@host:8123/db of a read-only user for the HTTP API's reads"
        " (default: CLICKHOUSE_DSN; the embedded stack uses its gateway's reader)",
    )
    clickhouse_database: str | None = Field(
        default=None, description="Database name; defaults to the DSN path, else 'bastionary'."
    )
    clickhouse_compression: Literal["lz4", "none"] = Field(
        default="lz4",
        description="how insert bodies and query results travel to and from a ClickHouse server (http/https);"
        " in-process chdb and the embedded gateway send nothing over a network and ignore it",
    )
    kafka_log_epoch: int | None = Field(
        default=None,
        ge=0,
        description="Raise it after deleting and recreating usage topics, so offsets from 0 count as new. "
        "The embedded broker sets its own (its topics live in memory).",
    )
    catalog: Path | None = Field(default=None, description="Path to the catalog YAML.")
    data_dir: Path = Field(default=Path(".bastionary"))
    topic_prefix: str = ""
    dedupe_horizon: IsoDuration = Field(default=timedelta(days=35))
    max_future_skew: IsoDuration = Field(default=timedelta(minutes=5))
    max_record_bytes: int = Field(default=1_048_576, gt=0)
    max_batch_events: int = Field(
        default=10_000, gt=0, description="events one batch record may hold; a larger one is one dead letter"
    )
    usage_partitions: int = Field(default=4, gt=0)
    topic_replication: int = Field(default=1, gt=0)
    flush_interval: IsoDuration = Field(default=timedelta(milliseconds=250))
    flush_max_events: int = Field(default=20_000, gt=0, description="records buffered before a flush")
    flush_max_bytes: int = Field(default=4 * 1024 * 1024, gt=0, description="record bytes buffered before a flush")
    examine_processes: int = Field(
        default=0,
        ge=0,
        le=64,
        description="child processes that parse and validate usage records off the worker's interpreter (0: in it)",
    )
    flush_process: bool = Field(
        default=False,
        description=(
            "plan and write each flush in a process of the worker's own, which owns the dedupe cache"
            " (needs ClickHouse outside the worker: a server, not chdb in its process)"
        ),
    )
    flush_processes: int = Field(
        default=1,
        ge=1,
        le=64,
        description=(
            "with flush_process: how many flush processes share the worker's partitions, each with a"
            " dedupe cache of its own (and examine_processes children of its own); a flush's partitions"
            " are planned and written in all at once"
        ),
    )
    # Read-ahead is counted in records, and a record may hold 100 events (~13 KB): 16,384 held
    # a whole backlog in memory. The worker's peak RSS after 1M distinct ids over HTTP was
    # 773 MB with 16,384 and 627 MB with 1,024, at about the same ingest rate (bench's rss
    # phase, 2026-11-30).
    stream_buffer_records: int = Field(
        default=1024,
        gt=0,
        description="records Faust may read ahead per partition before an agent (billing, dunning, overrides) takes them",
    )
    kafka_fetch_max_wait: IsoDuration = Field(
        default=timedelta(milliseconds=100), description="how long a fetch may wait for data (Faust fixes 1.5 s)"
    )
    log_check_interval: IsoDuration = Field(
        default=timedelta(seconds=2), description="how often each partition's log is checked against what landed"
    )
    dedupe_purge_interval: IsoDuration = Field(
        default=timedelta(hours=1), description="how often dedupe entries past the horizon are dropped"
    )
    stall_timeout: IsoDuration = Field(
        default=timedelta(seconds=60), description="/healthz fails when waiting records have not moved for this long"
    )
    consumer_group: str = "bastionary"
    kafka_session_timeout: IsoDuration = Field(
        default=timedelta(seconds=10),
        description="Consumer group session timeout: how soon a dead worker's partitions move. "
        "Some brokers (Tansu) also hold a group join for half of it.",
    )
    worker_id: str | None = None
    web_host: str = "127.0.0.1"
    web_port: int = Field(default=6066, ge=0, le=65535)
    web_url: str | None = Field(
        default=None,
        description="how other workers reach this one's web server (default http://WEB_HOST:WEB_PORT); "
        "{hostname} and {ip} are replaced by this host's name and address, so that one setting serves "
        "every replica (docker compose --scale, a Kubernetes Deployment)",
    )
    query_host: str = "127.0.0.1"
    query_port: int = Field(default=0, ge=0, le=65535, description="embedded query gateway; 0 = free port")
    query_timeout: IsoDuration = Field(
        default=timedelta(seconds=30), description="longest a read-only query on the embedded gateway may run"
    )
    query_max_result_bytes: int = Field(
        default=100 * 1024 * 1024, gt=0, description="largest result a read-only query on the gateway may return"
    )
    query_reader_password: SecretStr | None = None
    query_writer_password: SecretStr | None = None
    rating_enabled: bool = Field(default=True, description="run the rater inside workers")
    rating_grace: IsoDuration = Field(
        default=timedelta(hours=1),
        description="wait after a period ends (whole minutes: usage is read by ingest minute)",
    )
    rating_interval: IsoDuration = Field(
        default=timedelta(seconds=10), description="how often to look for closed periods"
    )
    rating_backfill: bool = Field(
        default=False,
        description="rate the periods of every subscription that ended before it was received (a backfill); "
        "otherwise only those whose created event says backfill: true",
    )
    dunning_enabled: bool = Field(default=True, description="run dunning (decisions and delivery) inside workers")
    dunning_interval: IsoDuration = Field(default=timedelta(seconds=5), description="how often open cases are decided")
    dunning_backfill: bool = Field(default=False, description="chase invoices a backfill issued (backfill: true)")
    clock: str = Field(
        default="system",
        pattern=r"^(system|file:.+)$",
        description="the clock dunning runs on: system, or file:PATH holding an ISO time (tests, demos)",
    )
    webhook_url: str | None = Field(default=None, description="where dunning notices are POSTed")
    webhook_secret: SecretStr | None = Field(default=None, description="Standard Webhooks secret: whsec_<base64 key>")
    webhook_timeout: IsoDuration = Field(default=timedelta(seconds=10))
    webhook_max_attempts: int = Field(default=5, gt=0)
    webhook_backoff: IsoDuration = Field(
        default=timedelta(seconds=1), description="first retry delay (doubles, jittered)"
    )
    webhook_backoff_cap: IsoDuration = Field(default=timedelta(seconds=30))
    smtp_host: str | None = Field(default=None, description="SMTP server for dunning email; unset = no email")
    smtp_port: int = Field(default=25, gt=0, le=65535)
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_sender: str = "billing@localhost"
    smtp_starttls: bool = False
    smtp_tls: bool = False
    smtp_max_attempts: int = Field(default=3, gt=0)
    company_name: str = Field(default="Bastionary", description="the sender named in dunning email")
    api_keys: SecretStr | None = Field(
        default=None,
        description="comma-separated admin API keys for the workers' HTTP API (Authorization: Bearer)",
    )
    api_key_file: Path | None = Field(
        default=None, description="JSON Lines of hashed API keys with scopes (`bastionary api-key new`)"
    )
    event_loop: EventLoop = Field(
        default="uvloop", description="the workers' event loop; asyncio's own for a platform without uvloop"
    )
    log_format: Literal["auto", "json", "console"] = "auto"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @field_validator("rating_grace")
    @classmethod
    def _grace_in_whole_minutes(cls, value: timedelta) -> timedelta:
        # Usage is read by whole ingest minutes: a grace of seconds would be rounded up, silently.
        if value < timedelta(0) or value % timedelta(minutes=1):
            raise ValueError("must be zero or a whole number of minutes (usage is read by ingest minute), e.g. PT5M")
        return value

    @field_validator(
        "dedupe_horizon",
        "flush_interval",
        "kafka_fetch_max_wait",
        "log_check_interval",
        "dedupe_purge_interval",
        "stall_timeout",
        "kafka_session_timeout",
        "query_timeout",
        "rating_interval",
        "dunning_interval",
        "webhook_timeout",
        "webhook_backoff",
        "webhook_backoff_cap",
    )
    @classmethod
    def _longer_than_zero(cls, value: timedelta, info: ValidationInfo) -> timedelta:
        # Zero is no value for these: a timeout of zero reads as "no limit" downstream (ClickHouse's
        # max_execution_time, aiohttp's total), an interval of zero spins its loop, a horizon of
        # zero deduplicates nothing. MAX_FUTURE_SKEW and RATING_GRACE may be zero: there it means none.
        name = info.field_name or ""
        least = _AT_LEAST.get(name)
        if value < least if least is not None else value <= timedelta(0):
            floor = f"at least {format_iso_duration(least)}" if least is not None else "more than zero"
            raise ValueError(f"must be {floor}, e.g. {format_iso_duration(cls.model_fields[name].default)}")
        return value

    @field_validator("web_host", "consumer_group")
    @classmethod
    def _not_empty(cls, value: str) -> str:
        # An empty value (a compose file's unset ${VAR}) is never meant: an empty WEB_HOST made
        # aiohttp listen on every interface instead of 127.0.0.1, the API open to the network.
        if not value.strip():
            raise ValueError("is empty: leave it unset for the default, or give a value (0.0.0.0 listens on all)")
        return value

    @field_validator("worker_id")
    @classmethod
    def _worker_id_names_a_directory(cls, value: str | None) -> str | None:
        # Set but empty (a template's unset $HOSTNAME), it was taken for unset: worker-<pid>,
        # which is worker-1 in every container. It also names the worker's directories in the
        # data dir: with '/' the start ended in an unexpected error, and '..' opened the dedupe
        # cache in the data dir itself. A setting, so that `bastionary config` refuses it as well.
        if value is None:
            return value
        if not value.strip():
            raise ValueError(
                "is empty: give each worker an id of its own (a stable one keeps its dedupe cache across"
                " restarts), or leave it unset for worker-<pid>"
            )
        if value in (".", "..") or any(c in value for c in "/\0"):
            raise ValueError(
                f"{value[:64]!r} cannot name the worker's directories in the data dir: no '/', and not '.'"
                " or '..' (a hostname is a good id)"
            )
        return value

    @field_validator("topic_prefix")
    @classmethod
    def _prefix_is_topic_safe(cls, value: str) -> str:
        if value and not re.fullmatch(r"[A-Za-z0-9._-]+", value):
            raise ValueError("may contain only letters, digits, '.', '_' and '-'")
        return value

    @field_validator("kafka_bootstrap")
    @classmethod
    def _bootstrap_is_host_ports(cls, value: str | None) -> str | None:
        # aiokafka reads a port that is no number with int(): the worker ended in a ValueError
        # reported as a bug of ours, after its web port and catalog were checked.
        problem = _bootstrap_problem(value) if value else None
        if problem:
            raise ValueError(f"must be host:port[,host:port]: {problem}")
        return value

    @field_validator("clickhouse_dsn")
    @classmethod
    def _dsn_scheme(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            scheme = urlsplit(value.get_secret_value()).scheme
            if scheme not in ("chdb", "http", "https"):
                raise ValueError("scheme must be chdb://, http:// or https://")
            _server_address_readable(value)
        return value

    @field_validator("clickhouse_reader_dsn")
    @classmethod
    def _reader_dsn_scheme(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and urlsplit(value.get_secret_value()).scheme not in ("http", "https"):
            raise ValueError("scheme must be http:// or https:// (a ClickHouse server's read-only user)")
        if value is not None:
            _server_address_readable(value)
        return value

    @field_validator(
        "clickhouse_dsn",
        "clickhouse_reader_dsn",
        "query_reader_password",
        "query_writer_password",
        "webhook_secret",
        "smtp_password",
        "api_keys",
    )
    @classmethod
    def _secrets_not_empty(cls, value: SecretStr | None) -> SecretStr | None:
        # An empty secret is a mistake (an unset variable in a compose file), never a choice.
        if value is not None and not value.get_secret_value().strip(" ,"):
            raise ValueError("is set but empty; unset it, or give it a value")
        return value

    @field_validator("webhook_secret")
    @classmethod
    def _webhook_secret_strength(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            from bastionary.outbound import secret_bytes

            if len(secret_bytes(value.get_secret_value())) < 16:
                raise ValueError("must hold at least 16 bytes (Standard Webhooks: whsec_ + base64 of 24-64 bytes)")
        return value

    @model_validator(mode="after")
    def _settings_agree(self) -> Settings:
        # One validator, so that every disagreement is reported at once (one line each).
        problems = []
        if self.webhook_url and self.webhook_secret is None:
            problems.append("WEBHOOK_URL is set without WEBHOOK_SECRET: notices must be signed")
        if self.web_url and not _http_url_with_host(
            self.web_url.replace("{hostname}", "host").replace("{ip}", "127.0.0.1")
        ):
            # Advertised to the other workers as given: a check routed to this one then failed.
            problems.append("WEB_URL must be an http(s) URL with a host, e.g. http://{hostname}:6066")
        if self.webhook_url and not _http_url_with_host(self.webhook_url):
            problems.append("WEBHOOK_URL must be an http(s) URL with a host, e.g. https://billing.example.com/hooks")
        if self.webhook_backoff_cap < self.webhook_backoff:
            problems.append(
                f"WEBHOOK_BACKOFF_CAP ({format_iso_duration(self.webhook_backoff_cap)}) is shorter than"
                f" WEBHOOK_BACKOFF ({format_iso_duration(self.webhook_backoff)}): the cap bounds every retry delay"
            )
        if self.smtp_starttls and self.smtp_tls:
            problems.append(
                "SMTP_STARTTLS and SMTP_TLS are both true: choose one (SMTP_TLS for a server that speaks"
                " TLS from the start, usually port 465; SMTP_STARTTLS to upgrade a plain connection, usually 587)"
            )
        if self.flush_processes > 1 and not self.flush_process:
            problems.append("FLUSH_PROCESSES above 1 needs FLUSH_PROCESS=true: without it the worker flushes itself")
        if problems:
            raise ValueError("\n".join(problems))
        return self

    @property
    def api_key_list(self) -> list[SecretStr]:
        if self.api_keys is None:
            return []
        return [SecretStr(k.strip()) for k in self.api_keys.get_secret_value().split(",") if k.strip()]

    def advertised_web_url(self) -> str:
        """``web_url`` with ``{hostname}`` and ``{ip}`` filled in, or the listening address."""
        if not self.web_url:
            return f"http://{self.web_host}:{self.web_port or 6066}"
        hostname = socket.gethostname()
        url = self.web_url.replace("{hostname}", hostname)
        if "{ip}" in url:
            try:
                address = socket.gethostbyname(hostname)
            except OSError:
                address = "127.0.0.1"
            url = url.replace("{ip}", address)
        return url

    @property
    def data_path(self) -> Path:
        return self.data_dir.expanduser().resolve()

    def clickhouse_url(self) -> str:
        """The effective DSN, secret included: pass it to the client, never to a log."""
        if self.clickhouse_dsn is not None:
            return self.clickhouse_dsn.get_secret_value()
        return f"chdb://{self.data_path / 'clickhouse'}"

    @property
    def embedded_clickhouse(self) -> bool:
        return self.clickhouse_url().startswith("chdb:")

    @property
    def database(self) -> str:
        if self.clickhouse_database:
            return self.clickhouse_database
        parts = urlsplit(self.clickhouse_url())
        if parts.scheme in ("http", "https") and parts.path.strip("/"):
            return parts.path.strip("/").split("/")[0]
        return "bastionary"

    def redacted(self) -> dict[str, Any]:
        """The effective configuration with every secret masked, for `config --validate`."""
        out = self.model_dump(mode="json")
        dsn = self.clickhouse_url()
        out["clickhouse_dsn"] = url_without_credentials(dsn) if urlsplit(dsn).netloc else dsn
        if self.clickhouse_reader_dsn is not None:
            out["clickhouse_reader_dsn"] = url_without_credentials(self.clickhouse_reader_dsn.get_secret_value())
        for key in ("query_reader_password", "query_writer_password", "webhook_secret", "smtp_password", "api_keys"):
            out[key] = "***" if getattr(self, key) else None
        for key, field_info in type(self).model_fields.items():
            if field_info.annotation is timedelta:
                out[key] = format_iso_duration(getattr(self, key))
        return out


class ConfigError(Exception):
    """Raised with every configuration problem listed, not just the first."""


# Names under this prefix belong to the test suite (see tests/README.md); the product never reads them.
RESERVED_PREFIX = "BASTIONARY_TEST_"
# Read by the CLI before any setting (cli/common.py: an unexpected error shows its traceback),
# and named by its own error message: refused here, following that advice stopped every command.
NOT_SETTINGS = frozenset({"BASTIONARY_DEBUG"})


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """``BASTIONARY_*`` variables that name no setting, each with the closest valid name."""
    known = {f"BASTIONARY_{name.upper()}" for name in Settings.model_fields}
    problems = []
    for name in sorted(environ):
        upper = name.upper()
        if not upper.startswith("BASTIONARY_") or upper in known | NOT_SETTINGS or upper.startswith(RESERVED_PREFIX):
            continue
        close = difflib.get_close_matches(upper, sorted(known), n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]}?" if close else "; see `bastionary config --help` for the settings"
        problems.append(f"{name}: not a setting{hint}")
    return problems


def load_settings(environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Settings from the environment; every problem, unknown variables included, reported at once."""
    problems = unknown_variables(os.environ if environ is None else environ)
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        for err in exc.errors():
            if err["loc"]:
                problems.append(f"BASTIONARY_{'_'.join(str(p) for p in err['loc']).upper()}: {err['msg']}")
            else:  # a disagreement between settings, which names them itself
                problems += err["msg"].removeprefix("Value error, ").splitlines()
    if problems:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems))
    return settings
