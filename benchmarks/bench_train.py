"""`attnlab bench train`: see attnlab/bench/train.py and benchmarks/README.md."""
from attnlab.bench.train import main

if __name__ == "__main__":
    main()
