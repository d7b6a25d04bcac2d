"""Vocabulary every stage shares: reason codes, the plain HTTP request, a bounded expiring cache. No I/O, no
protobuf."""
