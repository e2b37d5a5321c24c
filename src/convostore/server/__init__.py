"""``convostore serve``: the HTTP API (``/v1``) and the conversation browser (``/ui``).

Needs the ``server`` extra (``pip install 'convostore[server]'``): FastAPI, uvicorn, Jinja2.
"""

from .app import create_app, serve

__all__ = ["create_app", "serve"]
