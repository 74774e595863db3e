"""The lb service."""
