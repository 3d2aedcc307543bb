"""Routes of this part (being written)."""
from aiohttp import web


def register(app: web.Application) -> None:
    """Add this part's routes and middlewares to the gateway app."""
