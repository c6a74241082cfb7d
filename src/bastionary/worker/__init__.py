"""All Faust wiring lives here: the app factory, the agents, the services, the web API, and the
bare agent that measures Faust's own ceiling for the benchmark.

Nothing outside this package imports Faust, so domain logic stays testable without a broker.
"""
