"""A live lmforge server on 127.0.0.1 (a free port) in a thread of the test process."""

from __future__ import annotations

import socket
import threading
import time

import uvicorn

import lmforge
from lmforge.serve import Server, build_app


class LiveServer:
    def __init__(self, folder, name: str = "tiny", **options):
        self.server = Server(lmforge.load(folder), name, **options)
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        self.uvicorn = uvicorn.Server(uvicorn.Config(build_app(self.server), log_level="warning"))
        self.thread = threading.Thread(target=self.uvicorn.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.uvicorn.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)

    def client(self):
        from openai import OpenAI

        return OpenAI(base_url=self.url + "/v1", api_key="unused", max_retries=0, timeout=120)

    def close(self) -> None:
        self.uvicorn.should_exit = True
        self.thread.join(30)
