#!/usr/bin/env python3
"""The demo's generative model servers: OpenAI-compatible chat completions
(`POST /v1/chat/completions`, and `/v1/completions`), as vLLM serves them
behind KServe's LLMInferenceService, one server per model version.

Each answers with the model it was asked for (the body's `model`) and names
itself (`x-served-by`), and echoes what reached it, so a test can see the
filter's work upstream: the routing header (`x-upstream-saw-version`), the
model header (`x-upstream-saw-model`), the body's length and SHA-256
(`x-upstream-body-length`, `x-upstream-body-sha256`) and how it was framed
(`x-upstream-content-length`, `x-upstream-transfer-encoding`). With `"stream": true`
it answers in server-sent events, one chunk every `--chunk-delay` seconds
(the first at once), then `data: [DONE]`.

`make run` starts chat-v1 on :10021 and chat-v2 on :10022 behind the local
Envoy; the end-to-end tests start them on free ports.

    curl -s localhost:10000/v1/chat/completions -H 'content-type: application/json' \\
      -d '{"model":"llama","messages":[{"role":"user","content":"hi"}],"user":"alice"}'
"""

from __future__ import annotations

import argparse
import hashlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

WORDS = ["Hello", " from", " the", " model", "."]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body leave in separate writes: without TCP_NODELAY, each
    # answer would wait out the client's delayed ACK (40 ms).
    disable_nagle_algorithm = True
    version_name = "chat-v1"
    chunk_delay = 0.05

    def log_message(self, *args) -> None:
        pass

    def _body(self) -> bytes:
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            out = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("content-length") or 0))

    def _echo(self, body: bytes) -> list[tuple[str, str]]:
        return [
            ("x-served-by", self.version_name),
            ("x-upstream-saw-version", self.headers.get("x-canary-version", "")),
            ("x-upstream-saw-model", self.headers.get("x-gateway-model-name", "")),
            ("x-upstream-body-length", str(len(body))),
            ("x-upstream-body-sha256", hashlib.sha256(body).hexdigest()),
            # How the body was framed when it reached the server.
            ("x-upstream-content-length", self.headers.get("content-length", "")),
            ("x-upstream-transfer-encoding", self.headers.get("transfer-encoding", "")),
        ]

    def do_POST(self) -> None:
        body = self._body()
        try:
            request = json.loads(body)
            model = request.get("model", "") if isinstance(request, dict) else ""
            stream = isinstance(request, dict) and request.get("stream") is True
        except ValueError:
            model, stream = "", False
        if stream:
            self.send_response(200)
            for k, v in [("content-type", "text/event-stream"), ("cache-control", "no-cache"),
                         ("transfer-encoding", "chunked"), *self._echo(body)]:
                self.send_header(k, v)
            self.end_headers()
            for i, word in enumerate(WORDS):
                if i:
                    time.sleep(self.chunk_delay)
                event = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": model,
                         "choices": [{"index": 0, "delta": {"content": word}}]}
                self._chunk(f"data: {json.dumps(event)}\n\n".encode())
            self._chunk(b"data: [DONE]\n\n")
            self._chunk(b"")
            return
        answer = json.dumps({
            "id": "chatcmpl-1", "object": "chat.completion", "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(WORDS)},
                         "finish_reason": "stop"}],
        }).encode()
        self.send_response(200)
        for k, v in [("content-type", "application/json"), ("content-length", str(len(answer))), *self._echo(body)]:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(answer)

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()


def serve(version: str, port: int, chunk_delay: float = 0.05) -> ThreadingHTTPServer:
    """Starts one model server in a background thread; `.shutdown()` stops it."""
    handler = type("VersionHandler", (Handler,), {"version_name": version, "chunk_delay": chunk_delay})
    server = ThreadingHTTPServer(("127.0.0.1", port), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--chunk-delay", type=float, default=0.05, help="seconds between streamed chunks")
    args = p.parse_args()
    servers = [serve("chat-v1", 10021, args.chunk_delay), serve("chat-v2", 10022, args.chunk_delay)]
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        for s in servers:
            s.shutdown()


if __name__ == "__main__":
    main()
