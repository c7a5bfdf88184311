"""`lmforge serve MODEL`: an OpenAI-compatible HTTP server (continuous batching) with a playground page at /."""

from __future__ import annotations

import argparse
import socket

from lmforge.cli.generate import add_model_argument, load_checkpoint
from lmforge.errors import LmforgeError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_argument(parser)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (default: 8000; 0 picks a free one)")
    parser.add_argument("--model-name", help="the model's name in the API (default: MODEL as given)")
    parser.add_argument("--max-batch", type=int, default=32, metavar="N",
                        help="sequences decoded together at most (default: 32)")
    parser.add_argument("--max-queue", type=int, default=256, metavar="N",
                        help="requests waiting at most; more are answered 429 (default: 256)")
    parser.add_argument("--max-body", type=int, default=1 << 20, metavar="BYTES",
                        help="largest request body; larger ones are answered 413 (default: 1 MiB)")
    parser.add_argument("--shutdown-timeout", type=float, default=30.0, metavar="SECONDS",
                        help="on SIGTERM or Ctrl-C, how long in-flight requests may finish before they are "
                             "cancelled (default: 30)")


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from lmforge.serve import Server, build_app

    if not 0 <= args.port <= 65535:
        raise LmforgeError(f"--port must be between 0 and 65535 (0 picks a free one), not {args.port}")
    for name in ("max_batch", "max_queue", "max_body"):
        if getattr(args, name) < 1:
            raise LmforgeError(f"--{name.replace('_', '-')} must be at least 1 (got {getattr(args, name)})")
    sock = socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((args.host, args.port))
    except OSError as exc:
        raise LmforgeError(f"cannot listen on {args.host}:{args.port} ({exc.strerror}); choose another --port "
                           "(0 picks a free one)") from None
    sock.listen(2048)  # connections wait in the backlog until uvicorn accepts them
    server = Server(load_checkpoint(args), args.model_name or args.model, args.max_batch, args.max_queue,
                    args.max_body)
    host, port = sock.getsockname()[:2]
    url = f"http://{host if ':' not in host else f'[{host}]'}:{port}"
    print(f"serving {server.model_name} at {url} (playground {url}/, OpenAI API {url}/v1)", flush=True)
    config = uvicorn.Config(build_app(server), log_level="warning", timeout_graceful_shutdown=args.shutdown_timeout)
    uvicorn.Server(config).run(sockets=[sock])
    return 0
