"""Drops library log lines that say nothing to a cljax user."""

from __future__ import annotations

import logging


class _DropPrefixes(logging.Filter):

  def __init__(self, prefixes: tuple[str, ...]):
    super().__init__()
    self.prefixes = prefixes

  def filter(self, record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith(self.prefixes)


def drop_absl_messages(*prefixes: str) -> None:
  """Drops the ``absl`` logger's records (orbax and tfds log through it)
  whose message starts with one of ``prefixes`` (once per prefix set)."""
  log = logging.getLogger("absl")
  if not any(isinstance(f, _DropPrefixes) and f.prefixes == prefixes
             for f in log.filters):
    log.addFilter(_DropPrefixes(prefixes))
