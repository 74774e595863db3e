"""Command-line entry points: `pinet` (run a service) and `pi` (the user's CLI)."""
