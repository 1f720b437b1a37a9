"""Runtime wiring, operator operations, seed, reports, logs, configuration."""
