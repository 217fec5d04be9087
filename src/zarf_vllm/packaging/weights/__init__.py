"""Model weights on disk: hash, verify, pull and lock them against a model manifest.

One concept per module: `hashing` (parallel sha256), `errors`, `verify` (a directory against
a manifest), `marker` (the record of a finished verification), `architecture` (config.json
against the manifest's facts), `hub` (Hugging Face downloads), `pull` and `lock`.
"""
