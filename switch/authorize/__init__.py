"""One authorization in flow order: connection glue, fairness, the decision, hot state, HSM checks."""
