"""`attnlab bench decode`: see attnlab/bench/decode.py and benchmarks/README.md."""
from attnlab.bench.decode import main

if __name__ == "__main__":
    main()
