"""Side-by-side benchmarks: attnlab against the references of the field, same process, same inputs, JSON out.

`attnlab bench train|epoch|decode|attention [options]` (or benchmarks/bench_*.py) runs them; see
benchmarks/README.md for what each measures.

Place in the layering: serve and bench; imports only from applications and the parts below it (tests/test_layering.py).
"""
