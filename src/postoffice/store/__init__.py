"""The store: mailboxes, messages, accounts (DESIGN §3).  The only package that knows SQL or
file paths; everything else goes through the `Store` protocol in `api.py`."""

from postoffice.store.api import Store
from postoffice.store.sqlite import SqliteStore, open_store

__all__ = ["SqliteStore", "Store", "open_store"]
