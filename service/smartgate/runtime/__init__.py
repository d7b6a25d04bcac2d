"""Processes and listeners: the worker (composition root), the supervisor, the HTTP listener and SMART discovery."""
