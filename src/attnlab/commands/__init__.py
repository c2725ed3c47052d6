"""CLI subcommands, one file each (see attnlab.cli)."""
