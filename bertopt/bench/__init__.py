"""bench: latency/throughput sweeps, fidelity and task accuracy against a reference."""
