"""Command-line commands of cli_generate (registered on sparsevdit.cli.app)."""

from .cli import app, console  # noqa: F401
