"""batchyard's benchmarks: `make bench` (python -m benchmarks.run). See docs/performance.md."""
