"""Helpers of the deterministic simulation (tests/test_simulation.py; docs/testing.md, "Deterministic simulation")."""
