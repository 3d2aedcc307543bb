"""CLI of this part (being written)."""


def register(subparsers) -> None:
    """Add this part's subcommands to `llmgw`."""
