"""`lmforge serve`: an OpenAI-compatible HTTP server with continuous batching, chat templates and a playground.

    from lmforge.serve import Server, build_app
    app = build_app(Server(lmforge.load("runs/demo/train/best"), "demo"))  # any ASGI server runs `app`
"""

from lmforge.serve.app import Server, build_app

__all__ = ["Server", "build_app"]
