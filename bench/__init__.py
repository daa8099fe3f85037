"""Benchmarks: measured hot paths (page decoding, diff, delivery), results in bench/results/."""
