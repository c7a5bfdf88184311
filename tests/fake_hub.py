"""A loopback fake of the Hugging Face Hub: enough of its HTTP API for huggingface_hub (and so transformers
and lmforge) to list, resolve and download model and data set repositories.

    GET  /api/{models,datasets}/ID[/revision/REV]   the repository's info: commit sha, file list, gated
    HEAD /[datasets/]ID/resolve/REV/PATH            X-Repo-Commit, ETag (X-Linked-Etag/-Size for LFS files)
    GET  the same                                    the bytes; Range requests answered with 206
    GET  /files/PATH                                 plain static files (public data set sources)

Errors carry the Hub's X-Error-Code (RepoNotFound, RevisionNotFound, EntryNotFound, GatedRepo). Every
request is logged; faults can be injected per file (a connection cut half way).
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

GOOD_TOKEN = "hf_fake_token_with_access"
LFS_SUFFIXES = (".safetensors", ".bin", ".parquet", ".gz", ".h5", ".msgpack", ".model", ".ot", ".tflite")


@dataclass
class FakeRepo:
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)  # sha -> path -> bytes
    refs: dict[str, str] = field(default_factory=dict)  # branch or tag -> sha
    gated: bool = False
    private: bool = False


@dataclass
class Request:
    method: str
    path: str
    range: str | None
    token: str | None


class FakeHub:
    def __init__(self):
        self.repos: dict[tuple[str, str], FakeRepo] = {}
        self.static: dict[str, bytes] = {}
        self.log: list[Request] = []
        self.cuts: dict[str, int] = {}  # file path -> how many GETs to cut half way
        self.dead_after_cut: set[str] = set()  # files whose resumed requests are refused too
        self.vanished: set[str] = set()  # files the listing shows but downloads answer 404 for
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def reset(self) -> None:
        self.repos.clear()
        self.static.clear()
        self.log.clear()
        self.cuts.clear()
        self.dead_after_cut.clear()
        self.vanished.clear()

    def add(self, repo_id: str, files: dict[str, bytes | str | Path], repo_type: str = "model", revision: str = "main",
            gated: bool = False, private: bool = False) -> str:
        """Add a commit of `files` as `revision` (a branch or tag) of a repository; returns the commit sha."""
        repo = self.repos.setdefault((repo_type, repo_id), FakeRepo())
        repo.gated, repo.private = gated or repo.gated, private or repo.private
        content = {path: _bytes(data) for path, data in files.items()}
        content.setdefault(".gitattributes", b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n")
        sha = hashlib.sha1(repr(sorted((k, hashlib.sha1(v).hexdigest()) for k, v in content.items())).encode()
                           + revision.encode() + repo_id.encode()).hexdigest()
        repo.commits[sha] = content
        repo.refs[revision] = sha
        return sha

    def add_folder(self, repo_id: str, folder: Path, repo_type: str = "model", **kwargs) -> str:
        files = {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
        return self.add(repo_id, files, repo_type, **kwargs)

    def requests(self, contains: str = "") -> list[Request]:
        return [r for r in self.log if contains in r.path]


_SHARED: FakeHub | None = None


def shared_hub() -> FakeHub:
    """The process-wide fake Hub that tests/conftest.py points HF_ENDPOINT at."""
    global _SHARED
    if _SHARED is None:
        _SHARED = FakeHub()
    return _SHARED


def _bytes(data) -> bytes:
    if isinstance(data, Path):
        return data.read_bytes()
    return data.encode() if isinstance(data, str) else data


def _handler(hub: FakeHub):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # quiet
            pass

        def do_HEAD(self):
            self.respond(head=True)

        def do_GET(self):
            self.respond(head=False)

        # ---- routing -------------------------------------------------------------------------

        def respond(self, head: bool):
            path = unquote(urlsplit(self.path).path)
            auth = self.headers.get("Authorization", "")
            token = auth[len("Bearer "):] if auth.startswith("Bearer ") else None
            hub.log.append(Request(self.command, path, self.headers.get("Range"), token))
            if path.startswith("/files/") and path[len("/files/"):] in hub.static:
                return self.send_bytes(hub.static[path[len("/files/"):]], {}, head)
            if path.startswith("/api/models/") or path.startswith("/api/datasets/"):
                return self.api(path, token)
            if "/resolve/" in path:
                return self.resolve(path, token, head)
            self.error(404, "RepoNotFound", "Not found")

        def find(self, repo_type: str, repo_id: str, token: str | None, revision: str | None, api: bool):
            repo = hub.repos.get((repo_type, repo_id))
            if repo is None or (repo.private and token != GOOD_TOKEN):
                status = 401 if token is None else 404
                return None, self.error(status, "RepoNotFound", "Repository not found")
            if repo.gated and not api and token != GOOD_TOKEN:
                status = 401 if token is None else 403
                return None, self.error(status, "GatedRepo", f"Access to model {repo_id} is restricted.")
            sha = repo.refs.get(revision) or (revision if revision in repo.commits else None)
            if revision is not None and sha is None:
                return None, self.error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
            return (repo, sha), None

        def api(self, path: str, token: str | None):
            repo_type = "model" if path.startswith("/api/models/") else "dataset"
            rest = path.split("/", 3)[3]
            if "/tree/" in rest:
                repo_id, _, rest = rest.partition("/tree/")
                revision, _, folder = rest.partition("/")
                found, _ = self.find(repo_type, repo_id, token, revision, api=True)
                return found and self.tree(found, folder)
            repo_id, _, revision = rest.partition("/revision/")
            found, _ = self.find(repo_type, repo_id, token, revision or "main", api=True)
            if found is None:
                return
            repo, sha = found
            body = {"id": repo_id, "sha": sha, "private": repo.private, "gated": "manual" if repo.gated else False,
                    "siblings": [{"rfilename": name} for name in sorted(repo.commits[sha])]}
            self.send_bytes(json.dumps(body).encode(), {"Content-Type": "application/json"}, head=False)

        def tree(self, found, folder: str):
            """The files and folders under `folder` (recursive listings are not needed by the clients tested)."""
            repo, sha = found
            prefix = folder.strip("/") + "/" if folder.strip("/") else ""
            entries = {}
            for name, data in repo.commits[sha].items():
                if name.startswith(prefix):
                    head, _, tail = name[len(prefix):].partition("/")
                    entries[head] = ({"type": "directory", "path": prefix + head, "oid": "0" * 40} if tail else
                                     {"type": "file", "path": name, "size": len(data),
                                      "oid": hashlib.sha1(data).hexdigest()})
            if prefix and not entries:
                return self.error(404, "EntryNotFound", f"{folder} does not exist", {"X-Repo-Commit": sha})
            self.send_bytes(json.dumps(list(entries.values())).encode(), {"Content-Type": "application/json"}, False)

        def resolve(self, path: str, token: str | None, head: bool):
            repo_type = "dataset" if path.startswith("/datasets/") else "model"
            prefix, _, rest = path.partition("/resolve/")
            repo_id = prefix.removeprefix("/datasets/").lstrip("/")
            revision, _, filename = rest.partition("/")
            found, _ = self.find(repo_type, repo_id, token, revision, api=False)
            if found is None:
                return
            repo, sha = found
            data = repo.commits[sha].get(filename)
            if data is None or filename in hub.vanished:
                return self.error(404, "EntryNotFound", f"{filename} does not exist", {"X-Repo-Commit": sha})
            headers = {"X-Repo-Commit": sha, "Accept-Ranges": "bytes"}
            if filename.endswith(LFS_SUFFIXES):
                headers.update({"X-Linked-Etag": f'"{hashlib.sha256(data).hexdigest()}"',
                                "X-Linked-Size": str(len(data))})
            headers["ETag"] = f'"{hashlib.sha1(data).hexdigest()}"'
            if not head and filename in hub.cuts:
                if hub.cuts[filename] > 0:
                    hub.cuts[filename] -= 1
                    return self.cut(data, headers)
                if filename in hub.dead_after_cut:
                    self.close_connection = True
                    self.connection.close()
                    return
            self.send_bytes(data, headers, head)

        # ---- answers ---------------------------------------------------------------------------

        def send_bytes(self, data: bytes, headers: dict, head: bool):
            start, status = 0, 200
            byte_range = self.headers.get("Range")
            if byte_range and byte_range.startswith("bytes=") and not head:
                start = int(byte_range[len("bytes="):].split("-")[0])
                status = 206
                headers = {**headers, "Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"}
            body = data[start:]
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if not head:
                self.wfile.write(body)

        def cut(self, data: bytes, headers: dict):
            """Promise the whole file, send half of it, and drop the connection."""
            self.send_response(200)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[:len(data) // 2])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(2)

        def error(self, status: int, code: str, message: str, extra: dict | None = None):
            body = json.dumps({"error": message}).encode()
            self.send_response(status)
            self.send_header("X-Error-Code", code)
            self.send_header("X-Error-Message", message)
            for key, value in (extra or {}).items():
                self.send_header(key, value)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

    return Handler
