"""Benchmarks behind `make bench`: they measure and write BENCHMARKS.md, they never assert."""
