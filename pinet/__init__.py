"""pinet: the network layer of a multi-tenant container cloud."""

__version__ = "0.1.0"
