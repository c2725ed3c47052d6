"""Side-by-side benchmarks: attnlab against the references of the field, same process, same inputs, JSON out.

`attnlab bench train|epoch|decode|attention [options]` (or benchmarks/bench_*.py) runs them; see
benchmarks/README.md for what each measures.
"""
