"""`attnlab bench epoch`: see attnlab/bench/epoch.py and benchmarks/README.md."""
from attnlab.bench.epoch import main

if __name__ == "__main__":
    main()
