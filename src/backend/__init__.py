"""A LeapfrogAI-compatible gRPC backend on vLLM, packaged to cross an air gap with Zarf."""

__version__ = "0.1.0"
