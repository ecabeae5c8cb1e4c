"""The web dashboard on the gateway's HTTP side port: server-rendered pages (Jinja2), a small
script for live updates over Server-Sent Events, no build step. See routes.py for the routes."""

from services.gateway.web.routes import WEB_OPEN_PATHS, add_web_routes

__all__ = ["WEB_OPEN_PATHS", "add_web_routes"]
