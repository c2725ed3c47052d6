"""`python -m attnlab`: the same command line as `attnlab`.

Place in the layering: commands; imports only from serve and bench and the parts below it (tests/test_layering.py).
"""
import sys

from attnlab.cli import main

sys.exit(main())
