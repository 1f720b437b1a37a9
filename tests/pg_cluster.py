"""The private PostgreSQL cluster of the tests: benchmarks/pg_cluster.py (the bench starts the
same kind of cluster for `eum bench --store postgresql`)."""

from benchmarks.pg_cluster import PgCluster, PgClusterError, free_port, pg_bindir  # noqa: F401
