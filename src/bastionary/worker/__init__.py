"""All Faust wiring lives here: the app factory, the agents and the web views.

Nothing outside this package imports Faust, so domain logic stays testable without a broker.
"""
