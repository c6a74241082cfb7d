"""Bastionary: self-hosted usage billing."""

__version__ = "0.1.0"
