"""``python -m diffmem`` is the ``diffmem`` command."""

from diffmem.cli import entry

entry()
