"""Moved to :mod:`labkit.safepath` (the student's self-check reads run folders the same way); re-exported here."""

from labkit.safepath import DEFAULT_MAX_BYTES, UnsafePath, entries, folder, kind, read_bytes, read_text, regular_files

__all__ = ["DEFAULT_MAX_BYTES", "UnsafePath", "entries", "folder", "kind", "read_bytes", "read_text", "regular_files"]
