"""The backend's CLI commands, one module each: `serve`, `worker` and `chat`;
`model_settings` holds what `serve` and `worker` share."""
