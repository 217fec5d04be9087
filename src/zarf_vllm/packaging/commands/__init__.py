"""The packaging tool's CLI commands, one module each."""
