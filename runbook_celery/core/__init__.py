"""Shared by every layer: the error tree (exit codes), settings, redaction."""
