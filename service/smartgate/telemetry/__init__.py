"""Prometheus metrics (multiprocess aware). Imported by the stages that count; never by the supervisor."""
