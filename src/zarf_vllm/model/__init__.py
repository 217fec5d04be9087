"""The model contract both programs share: `manifest` (a model's pinned files and facts),
`verify` and `hashing` (weights against the manifest), `sizing` (whether a model fits the
hardware, and the engine values that make it fit), `errors`."""
