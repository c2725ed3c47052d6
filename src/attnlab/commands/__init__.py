"""CLI subcommands, one file each (see attnlab.cli).

Place in the layering: commands; imports only from serve and bench and the parts below it (tests/test_layering.py).
"""
