"""The network node: many domains behind one Flight SQL endpoint, with federated aggregates."""
