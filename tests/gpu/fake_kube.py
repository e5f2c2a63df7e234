"""A stand-in Kubernetes API for one TrainingRun on the GPU machine, which has no API server (stdlib + PyYAML).

It answers what the trainer's per-run Role allows: GET of the run and merge-PATCH of its status; every patch is
logged with its time. The status path itself is tested against the real API server on CPU (tests/trainer).

    python tests/gpu/fake_kube.py RUN.yaml PORT STATUS_LOG.jsonl    # writes kubeconfig.yaml next to the log
"""

from __future__ import annotations

import json
import re
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml

PATH = re.compile(r"^/apis/loka\.dev/v1alpha1/namespaces/([^/]+)/trainingruns/([^/?]+)(/status)?(\?.*)?$")


def merge(target: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """RFC 7386 JSON merge patch."""
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            merge(target[key], value)
        else:
            target[key] = value
    return target


def serve(manifest: Path, port: int, log_path: Path) -> None:
    run = next(d for d in yaml.safe_load_all(manifest.read_text()) if d and d.get("kind") == "TrainingRun")
    run["metadata"].setdefault("uid", "00000000-0000-0000-0000-000000000001")
    run["metadata"]["resourceVersion"] = "1"
    run.setdefault("status", {})
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def _send(self, code: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _match(self) -> re.Match[str] | None:
            found = PATH.match(self.path)
            meta = run["metadata"]
            return found if found and (found.group(1), found.group(2)) == (meta["namespace"], meta["name"]) else None

        def do_GET(self) -> None:
            if not self._match():
                return self._send(404, {"kind": "Status", "code": 404, "reason": "NotFound"})
            with lock:
                return self._send(200, run)

        def do_PATCH(self) -> None:
            found = self._match()
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
            if not found or not found.group(3):
                return self._send(404, {"kind": "Status", "code": 404, "reason": "NotFound"})
            with lock:
                merge(run, {"status": body.get("status", {})})
                run["metadata"]["resourceVersion"] = str(int(run["metadata"]["resourceVersion"]) + 1)
                with log_path.open("a") as out:
                    out.write(json.dumps({"time": time.time(), "patch": body, "status": run["status"]}) + "\n")
                return self._send(200, run)

        def log_message(self, *args: Any) -> None:
            pass

    kubeconfig = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "fake", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
        "users": [{"name": "fake", "user": {"token": "fake"}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}],
        "current-context": "fake",
    }
    (log_path.parent / "kubeconfig.yaml").write_text(yaml.safe_dump(kubeconfig))
    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()


if __name__ == "__main__":
    serve(Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]))
