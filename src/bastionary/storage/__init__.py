"""Storage: ClickHouse through clickhouse-connect, in-process (chdb://) or a server (http://)."""
