"""The backend's CLI commands, one module each: `serve` and `chat`."""
