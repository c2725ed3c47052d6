"""`attnlab bench attention`: see attnlab/bench/attention.py and benchmarks/README.md."""
from attnlab.bench.attention import main

if __name__ == "__main__":
    main()
