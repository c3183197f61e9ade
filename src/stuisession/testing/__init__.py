"""Test helpers for people who extend stuisession; **needs pytest** (not a runtime dependency).

- :mod:`stuisession.testing.stores`: :class:`~stuisession.testing.stores.StoreConformance`,
  the store conformance suite a third-party backend subclasses.

This package's ``__init__`` imports nothing, so ``import stuisession`` never needs pytest;
only importing :mod:`stuisession.testing.stores` does.
"""
