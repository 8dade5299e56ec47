"""The inbound pipeline (DESIGN §4): routing, policy, trace headers, store or queue.

`model` holds what the front-ends and the store exchange with it, `routing` resolves
addresses, `pipeline.Delivery` runs a whole delivery.  Nothing is re-exported here: the
store imports `delivery.model`, and a package import reaching for `pipeline` (which needs
the store) would make that a cycle.
"""
