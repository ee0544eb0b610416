"""The ``distill`` command (``cli.main:app``)."""
