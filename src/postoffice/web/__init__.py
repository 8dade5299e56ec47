"""The `http` listener: a Starlette application (`app.build_app`) served over the listener
layer's connections by `handler.HttpHandler`."""

from postoffice.web.handler import HttpHandler

__all__ = ["HttpHandler"]
