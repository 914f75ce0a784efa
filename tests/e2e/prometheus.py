"""Prometheus for the tests and the benches, started one way: Debian's
`prometheus` scraping Envoys' /stats/prometheus (each target with the
labels Istio's Prometheus gives a pod's series), and optionally other
scrape jobs, with the given rule files, on the caller's port, and waited
for until it is ready; `FakePrometheus`, its query API scripted, for
the answers a real one will not give on demand (a 500, a body that is no
JSON, a hang); and `Exporter`, an HTTP server serving scripted metrics for
it to scrape (an evaluator's, an application's).

tests/e2e/test_prometheus.py, test_mesh.py and test_quality.py run it, and
so does tests/bench/mesh.py: it needs the standard library and PyYAML only,
so the bench imports it without the e2e harness.
"""

from __future__ import annotations

import http.server
import json
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Callable

import yaml

# How long Prometheus may take to be ready, in seconds.
READY_TIMEOUT = 30


def tool(name: str) -> str:
    """The path of a tool of Debian's prometheus package (prometheus,
    promtool); an error naming the package where it is missing."""
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(f"{name} not found: apt-get install prometheus (.ci/run does)")
    return path


def envoy_cluster(port: int, name: str = "prometheus") -> dict:
    """The static Envoy cluster `name` to a Prometheus API on
    127.0.0.1:`port`, the cluster `guard.mesh` polls (Istio's would be
    `outbound|9090||prometheus.istio-system.svc.cluster.local`)."""
    endpoint = {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}
    return {
        "name": name,
        "connect_timeout": "0.25s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": endpoint}]}]},
    }


@dataclass
class Prometheus:
    """A Prometheus server on 127.0.0.1:`port` that scrapes Envoys' admin
    /stats/prometheus (`targets`: each an admin port and the labels its
    series get, as Istio's Prometheus gives a pod's series its namespace,
    pod and pod labels) every `scrape_interval` seconds, and evaluates
    `rule_files` every `evaluation_interval` seconds (a group's own
    `interval` wins). `scrape_configs` are more jobs, as entries of
    Prometheus' `scrape_configs` (an evaluator's or an application's own
    metrics: `exporter_job`). Its configuration, data and log
    (prometheus.log) are in `workdir`. `start()` returns once it is ready;
    `stop()` and `start()` again bring it back on the same port with its
    data."""

    workdir: Path
    targets: list[tuple[int, dict[str, str]]]
    rule_files: list[Path]
    port: int
    # The tests' 1 s keeps them short; Istio's Prometheus addon scrapes every
    # 15 s and evaluates every 60 s (the bench's defaults).
    scrape_interval: int = 1
    evaluation_interval: int = 1
    scrape_configs: list[dict] = field(default_factory=list)
    proc: subprocess.Popen | None = None
    log: IO[str] | None = None

    def config(self) -> dict:
        return {
            "global": {
                "scrape_interval": f"{self.scrape_interval}s",
                "evaluation_interval": f"{self.evaluation_interval}s",
            },
            "rule_files": [str(f) for f in self.rule_files],
            "scrape_configs": [{
                "job_name": "envoy-stats",
                "metrics_path": "/stats/prometheus",
                # As Istio's kubernetes-pods job: the series' own labels win.
                "honor_labels": True,
                "static_configs": [
                    {"targets": [f"127.0.0.1:{admin}"], **({"labels": labels} if labels else {})}
                    for admin, labels in self.targets
                ],
            }, *self.scrape_configs],
        }

    def start(self) -> "Prometheus":
        binary = tool("prometheus")
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "prometheus.yml"
        config.write_text(yaml.safe_dump(self.config()))
        self.log = open(self.workdir / "prometheus.log", "a")
        self.proc = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={self.workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=self.log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Prometheus exited with {self.proc.returncode}:\n{self.logs()[-3000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=2):
                    return self
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"Prometheus did not become ready in {READY_TIMEOUT} s:\n{self.logs()[-3000:]}")
                time.sleep(0.2)

    def stop(self) -> None:
        """Stops the server (its data stays); nothing if it is not running."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        if self.log is not None:
            self.log.close()

    def logs(self) -> str:
        try:
            return (self.workdir / "prometheus.log").read_text(errors="replace")
        except OSError:
            return ""

    def api(self, path: str, **params) -> dict | list:
        """The `data` of an answer of the HTTP API (/api/v1/`path`), which
        must be a success."""
        query = urllib.parse.urlencode(params, doseq=True)
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/api/v1/{path}?{query}", timeout=10) as r:
                body = json.load(r)
        except urllib.error.HTTPError as e:
            body = json.load(e)
        assert body["status"] == "success", f"{path} {params}: {body.get('error')}"
        return body["data"]

    def query(self, expr: str) -> list[dict]:
        """An instant query's series."""
        data = self.api("query", query=expr)
        assert data["resultType"] == "vector", (expr, data["resultType"])
        return data["result"]

    def wait_for_samples(self, expr: str, timeout: float = 15) -> list[dict]:
        """The query's series, once it has any."""
        deadline = time.monotonic() + timeout
        while not (result := self.query(expr)):
            assert time.monotonic() < deadline, f"no series for {expr}"
            time.sleep(self.scrape_interval / 2)
        return result


def exporter_job(name: str, ports: list[int], **fields) -> dict:
    """A scrape job for exporters on 127.0.0.1 serving /metrics; `fields`
    are more of the job's settings (metric_relabel_configs, ...)."""
    return {"job_name": name, "static_configs": [{"targets": [f"127.0.0.1:{p}" for p in ports]}], **fields}


def vector(series: list[dict], value: str = "1") -> bytes:
    """A query answer: one sample of `value` for each of `series` (the labels
    beside the mesh verdict's recorded name)."""
    return json.dumps({"status": "success", "data": {"resultType": "vector", "result": [
        {"metric": {"__name__": "canary_selector:canary_failing", **s}, "value": [time.time(), value]}
        for s in series]}}).encode()


def serve(handler: type[http.server.BaseHTTPRequestHandler]) -> http.server.ThreadingHTTPServer:
    """A server of `handler` on a free port of 127.0.0.1, serving from a
    daemon thread until its `shutdown()`."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


class FakePrometheus:
    """An HTTP server that answers /api/v1/query with `answer` (bytes), or
    with `status`, or hangs for `hang` seconds: the faults a real Prometheus
    will not show on demand. By default an empty vector: a verdict that names
    no failing canary. `queries` counts the queries, `arrived` holds when
    each came (`time.monotonic()`); the answer is the one set when the hang
    ends."""

    def __init__(self):
        self.answer, self.status, self.hang, self.queries = vector([]), 200, 0.0, 0
        self.arrived: list[float] = []
        # When set, the answer to the query of this number (1 for the first)
        # instead of `answer`.
        self.answer_for: Callable[[int], bytes] | None = None
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                outer.arrived.append(time.monotonic())
                outer.queries += 1
                number = outer.queries
                outer.last_path = self.path
                if outer.hang:
                    time.sleep(outer.hang)
                body = outer.answer_for(number) if outer.answer_for else outer.answer
                try:
                    self.send_response(outer.status)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the filter gave up on a hang (its timeoutMs), as the test wants

            def log_message(self, *args):
                pass

        self.server = serve(Handler)
        self.port = self.server.server_address[1]

    def stop(self) -> None:
        self.server.shutdown()


class Exporter:
    """An HTTP server on 127.0.0.1 (its `port`) that answers each path of
    `pages` with what its function returns, in Prometheus' text format,
    computed afresh at every scrape: the metrics of an evaluator, an
    application or (at /stats/prometheus) a proxy, as a test scripts them."""

    def __init__(self, pages: dict[str, Callable[[], str]]):
        self.pages = pages
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                page = outer.pages.get(self.path)
                body = page().encode() if page is not None else b"not found\n"
                self.send_response(200 if page is not None else 404)
                self.send_header("content-type", "text/plain; version=0.0.4")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = serve(Handler)
        self.port = self.server.server_address[1]

    def stop(self) -> None:
        self.server.shutdown()
