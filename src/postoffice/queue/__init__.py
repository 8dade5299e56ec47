"""Outbound delivery (DESIGN §5): the worker that empties the durable queue in the store."""
