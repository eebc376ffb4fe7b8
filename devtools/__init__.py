"""What the tests and the benchmarks share: the real servers as child processes (process.py)."""
