# canary-selector as an OCI image, for Istio's WasmPlugin / TrafficExtension
# `url: oci://...`. This is the layout Istio's image fetcher reads (the Wasm
# image "compat" variant): FROM scratch, a single layer, the module at
# /plugin.wasm. Nothing runs in it; Istio's agent extracts the file.
#
# Build it with `make image IMAGE=...` (or `make push IMAGE=...`): the build
# context is target/image/, which holds nothing but plugin.wasm (a copy of
# target/canary-selector.wasm).
FROM scratch
COPY plugin.wasm /plugin.wasm
