"""The benchmark set (`eum bench`): docs/performance.md."""
