"""The gRPC services of the LeapfrogAI backend contract, one module per proto package."""
