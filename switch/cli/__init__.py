"""The `eum` command line."""
