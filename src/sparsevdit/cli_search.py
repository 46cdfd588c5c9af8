"""Command-line commands of cli_search (registered on sparsevdit.cli.app)."""

from .cli import app, console  # noqa: F401
