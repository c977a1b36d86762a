"""CLI subcommands, one module per area, each exposing `register(app)`."""
