"""The dns service."""
