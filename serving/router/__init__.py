"""The one-machine data plane: MLServer processes behind a router with Seldon's URLs and semantics."""
