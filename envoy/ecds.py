#!/usr/bin/env python3
"""Render canary-selector's ECDS resource from a plugin config, the way Istio
delivers a WasmPlugin, and (with --watch) re-render it whenever the plugin
config file changes, so Envoy applies the new config live.

Istio turns a WasmPlugin into an Envoy `TypedExtensionConfig` named
`<namespace>.<name>` holding an `envoy.extensions.filters.http.wasm.v3.Wasm`
filter whose `root_id` is the WasmPlugin's `pluginName` and whose
`configuration` is the `pluginConfig` marshalled to JSON inside a
`google.protobuf.StringValue`. This script writes the same resource to a file
that Envoy watches (`path_config_source`); the file is replaced atomically
(write, then rename), which is what makes Envoy re-read it.

The plugin config text is passed through as it is: a config the filter
rejects is rejected by Envoy, and the last good one keeps serving, exactly
as with a bad `kubectl apply`.

Standard library only, so it runs in a bare `python` container too.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time

WASM_FILTER = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"
EXTENSION_CONFIG = "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig"
STRING_VALUE = "type.googleapis.com/google.protobuf.StringValue"

DEFAULT_NAME = "default.canary-selector"  # <namespace>.<WasmPlugin name>
DEFAULT_ROOT_ID = "canary-selector"  # the WasmPlugin's pluginName


def resource(
    plugin_config: str,
    wasm_path: str,
    name: str = DEFAULT_NAME,
    root_id: str = DEFAULT_ROOT_ID,
    fail_open: bool = True,
    failure_policy: str | None = None,
    allow_on_headers_stop_iteration: bool = True,
) -> dict:
    """The ECDS discovery response holding one canary-selector filter.
    `failure_policy` (Envoy's FAIL_OPEN, FAIL_CLOSED or FAIL_RELOAD), when
    given, overrides `fail_open`. `allow_on_headers_stop_iteration` off is
    Envoy's default (the tests turn it off to see what the filter does when
    Envoy delivers no body while it holds the headers)."""
    if failure_policy is None:
        failure_policy = "FAIL_OPEN" if fail_open else "FAIL_CLOSED"
    version = hashlib.sha256(plugin_config.encode()).hexdigest()[:12]
    return {
        "version_info": version,
        "resources": [
            {
                "@type": EXTENSION_CONFIG,
                "name": name,
                "typed_config": {
                    "@type": WASM_FILTER,
                    "config": {
                        "name": name,
                        "root_id": root_id,
                        "vm_config": {
                            "runtime": "envoy.wasm.runtime.v8",
                            "code": {"local": {"filename": wasm_path}},
                        },
                        "configuration": {"@type": STRING_VALUE, "value": plugin_config},
                        # Istio's failStrategy: FAIL_OPEN. A module that cannot
                        # load lets requests through untouched; they then take
                        # the default route to the stable version.
                        "failure_policy": failure_policy,
                        # Envoy hands the filter a request's body while the
                        # filter holds its headers (Envoy 1.35+): what
                        # rollouts scoped by the model in the body need.
                        # Without it a request that waits for its body is
                        # decided without it a tick later (docs/generative-models.md).
                        "allow_on_headers_stop_iteration": allow_on_headers_stop_iteration,
                    },
                },
            }
        ],
    }


def write_atomically(path: str, doc: dict) -> None:
    """Write `doc` as JSON to `path` via rename, so Envoy sees one complete file."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".ecds-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f, indent=2)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def render(config_path: str, wasm_path: str, out_path: str, **kwargs) -> str:
    with open(config_path, encoding="utf-8") as f:
        text = f.read()
    write_atomically(out_path, resource(text, wasm_path, **kwargs))
    return text


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="envoy/plugin-config.json", help="plugin config (JSON)")
    p.add_argument("--wasm", default="target/canary-selector.wasm")
    p.add_argument("--out", default="envoy/ecds/canary-selector.json")
    p.add_argument("--name", default=DEFAULT_NAME)
    p.add_argument("--root-id", default=DEFAULT_ROOT_ID)
    p.add_argument("--watch", action="store_true", help="re-render whenever --config changes")
    p.add_argument("--interval", type=float, default=0.3, help="seconds between checks")
    args = p.parse_args(argv)

    def push() -> str:
        text = render(args.config, args.wasm, args.out, name=args.name, root_id=args.root_id)
        print(f"ecds: pushed {args.config} to {args.out}", flush=True)
        return text

    last = push()
    while args.watch:
        time.sleep(args.interval)
        try:
            with open(args.config, encoding="utf-8") as f:
                text = f.read()
        except OSError:
            continue  # an editor mid-save; look again
        if text != last:
            last = push()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
