"""Benchmarks that write JSON (with a machine and commit header) and a PNG; timings live here, never in tests."""
