"""Command-line interface: one entry point, ``ivf-perception``, with subcommands."""
