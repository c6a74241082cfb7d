"""The demo and the benchmarks: the embedded stack under generated workloads. Only the CLI imports this."""
