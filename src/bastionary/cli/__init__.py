"""The ``bastionary`` command line."""
