"""The netagent service."""
