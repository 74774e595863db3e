"""What every pinet service shares: config, logging, metrics, the gRPC server."""
