"""The built module's exports are exactly the callbacks src/glue/
implements, plus what the SDK itself needs.

Envoy calls every callback a module exports on every request, so `make
build` prunes the SDK's exports to the Makefile's WASM_EXPORTS. A callback
added to the glue but missing from that list would silently never fire; one
on the list that the glue does not implement costs a VM entry per request
for nothing. Both fail here."""

import re

from harness import ROOT, WASM

GLUE = ROOT / "src" / "glue"

# The SDK trait method each ABI export dispatches to (proxy-wasm 0.2.5,
# src/dispatcher.rs).
EXPORT_OF_METHOD = {
    "on_vm_start": "proxy_on_vm_start",
    "on_configure": "proxy_on_configure",
    "on_tick": "proxy_on_tick",
    "on_queue_ready": "proxy_on_queue_ready",
    "on_done": "proxy_on_done",
    "on_log": "proxy_on_log",
    "on_foreign_function": "proxy_on_foreign_function",
    "on_new_connection": "proxy_on_new_connection",
    "on_downstream_data": "proxy_on_downstream_data",
    "on_downstream_close": "proxy_on_downstream_connection_close",
    "on_upstream_data": "proxy_on_upstream_data",
    "on_upstream_close": "proxy_on_upstream_connection_close",
    "on_http_request_headers": "proxy_on_request_headers",
    "on_http_request_body": "proxy_on_request_body",
    "on_http_request_trailers": "proxy_on_request_trailers",
    "on_http_response_headers": "proxy_on_response_headers",
    "on_http_response_body": "proxy_on_response_body",
    "on_http_response_trailers": "proxy_on_response_trailers",
    "on_http_call_response": "proxy_on_http_call_response",
    "on_grpc_call_response": "proxy_on_grpc_receive",
    "on_grpc_stream_initial_metadata": "proxy_on_grpc_receive_initial_metadata",
    "on_grpc_stream_message": "proxy_on_grpc_receive",
    "on_grpc_stream_trailing_metadata": "proxy_on_grpc_receive_trailing_metadata",
    "on_grpc_stream_close": "proxy_on_grpc_close",
}

# What every SDK module needs whatever it implements: its memory, the
# constructor that runs proxy_wasm::main!, the ABI marker, the allocator the
# host writes into, context create (the SDK builds each stream's context
# there) and delete (it frees it: without it every stream leaks).
SDK_EXPORTS = {
    "memory",
    "_initialize",
    "proxy_abi_version_0_2_1",
    "proxy_on_memory_allocate",
    "proxy_on_context_create",
    "proxy_on_delete",
}

SDK_TRAITS = ("Context", "RootContext", "HttpContext", "StreamContext")


def leb128(data: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[i]
        i += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, i


def module_exports(path) -> list[str]:
    """The names in the module's export section."""
    data = path.read_bytes()
    assert data[:8] == b"\0asm\x01\0\0\0", f"{path} is not a Wasm module"
    i, names = 8, []
    while i < len(data):
        section, i = data[i], i + 1
        size, i = leb128(data, i)
        end = i + size
        if section == 7:
            count, i = leb128(data, i)
            for _ in range(count):
                length, i = leb128(data, i)
                names.append(data[i : i + length].decode())
                i += length + 1  # the export's kind
                _, i = leb128(data, i)  # its index
        i = end
    return names


def implemented_callbacks() -> set[str]:
    """The SDK callbacks the glue's trait impls define, as ABI exports."""
    source = "\n".join(p.read_text() for p in sorted(GLUE.glob("*.rs")))
    found = set()
    for m in re.finditer(rf"impl\s+(?:{'|'.join(SDK_TRAITS)})\s+for\s+\w+\s*\{{", source):
        depth, j = 1, m.end()
        while depth:
            depth += {"{": 1, "}": -1}.get(source[j], 0)
            j += 1
        for method in re.findall(r"\bfn\s+(on_\w+)\s*\(", source[m.end() : j]):
            assert method in EXPORT_OF_METHOD, f"glue implements {method}, which this test does not know"
            found.add(EXPORT_OF_METHOD[method])
    return found


def test_the_module_exports_exactly_the_callbacks_the_glue_implements():
    exports = module_exports(WASM)
    assert len(exports) == len(set(exports))
    implemented = implemented_callbacks()
    assert {"proxy_on_request_headers", "proxy_on_configure"} <= implemented, implemented
    assert set(exports) == SDK_EXPORTS | implemented, (
        f"exported but not implemented: {sorted(set(exports) - SDK_EXPORTS - implemented)}; "
        f"implemented but not exported: {sorted(SDK_EXPORTS | implemented - set(exports))} "
        "(the Makefile's WASM_EXPORTS)"
    )


def test_proxy_on_delete_is_exported():
    # The SDK frees a stream's context only in proxy_on_delete.
    assert "proxy_on_delete" in module_exports(WASM)


def test_the_makefile_keeps_what_the_test_expects():
    makefile = (ROOT / "Makefile").read_text()
    listed = re.search(r"^WASM_EXPORTS :=((?:.*\\\n)*.*)$", makefile, re.M)
    assert listed, "WASM_EXPORTS not found in the Makefile"
    names = set(listed.group(1).replace("\\\n", " ").split())
    assert names == SDK_EXPORTS | implemented_callbacks()
