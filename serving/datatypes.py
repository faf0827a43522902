"""V2 (Open Inference protocol) tensor datatypes, grouped the ways this package needs them."""

INTEGER = frozenset({"INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"})
FLOAT = frozenset({"FP16", "FP32", "FP64"})
NUMERIC = INTEGER | FLOAT
"""What a model's numeric features may arrive as."""
EXACT = INTEGER | {"BOOL", "BYTES"}
"""Outputs compared for equality (labels), not within a tolerance."""
