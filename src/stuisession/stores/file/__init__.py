"""The embedded file store: one directory, durable atomic writes, a delta journal.

May import: :mod:`stuisession.stores.base`, :mod:`stuisession.codec`,
:mod:`stuisession.state` and the foundation modules.
"""

from stuisession.stores.file.store import FileStore

__all__ = ["FileStore"]
