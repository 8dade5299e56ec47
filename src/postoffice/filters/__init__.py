"""Inbound mail filtering (DESIGN §4, issue 8): the stage interface in api.py, the chain that
runs the configured stages in chain.py, and one module or package per stage."""
