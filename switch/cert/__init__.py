"""Certification mode: the test-card matrix and case list, the journal, the report (docs/certification.md)."""
