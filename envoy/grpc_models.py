#!/usr/bin/env python3
"""The demo's model servers over gRPC: KServe's V2 inference protocol, as
Triton serves it (`inference.GRPCInferenceService`, stubs from PyPI's
`tritonclient[grpc]`).

`ModelInfer` answers like the HTTP demo servers: the model's name, the
server's version (`model-v1` or `model-v2`) and one prediction (1 or 2).
`ModelStreamInfer` answers each request with three responses. Every call
first sends initial metadata naming the server (`x-served-by`) and echoing
the routing header it received (`x-upstream-saw-version`), so the call's
status always travels in the trailers, as a model server's does.

`make run` starts both behind the local Envoy (model-v1 on :10011, model-v2
on :10012); the end-to-end tests start them on free ports, and make one fail
(`mode`: a gRPC status code name) to trip the guard.

Try it through Envoy (port 10000, the same routes as HTTP):

    .venv/bin/python envoy/grpc_models.py --infer user-27
"""

from __future__ import annotations

import argparse
import signal
import sys
from concurrent import futures

import grpc
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

PREDICTION = {"model-v1": 1, "model-v2": 2}
STREAM_RESPONSES = 3


class ModelServer(service_pb2_grpc.GRPCInferenceServiceServicer):
    """One model version. `mode` is "ok", or the name of the gRPC status code
    every call ends with (after its initial metadata and, for a stream, its
    responses)."""

    def __init__(self, version: str, mode: str = "ok"):
        self.version = version
        self.mode = mode

    def _start(self, context) -> None:
        seen = dict(context.invocation_metadata()).get("x-canary-version", "")
        context.send_initial_metadata((("x-served-by", self.version), ("x-upstream-saw-version", seen)))

    def _end(self, context) -> None:
        if self.mode != "ok":
            context.abort(getattr(grpc.StatusCode, self.mode), f"{self.version} fails with {self.mode}")

    def _response(self, request) -> pb.ModelInferResponse:
        output = pb.ModelInferResponse.InferOutputTensor(
            name="predictions",
            datatype="INT64",
            shape=[1],
            contents=pb.InferTensorContents(int64_contents=[PREDICTION.get(self.version, 0)]),
        )
        return pb.ModelInferResponse(
            model_name=request.model_name, model_version=self.version, id=request.id, outputs=[output]
        )

    def ModelInfer(self, request, context):
        self._start(context)
        self._end(context)
        return self._response(request)

    def ModelStreamInfer(self, request_iterator, context):
        self._start(context)
        for request in request_iterator:
            for _ in range(STREAM_RESPONSES):
                yield pb.ModelStreamInferResponse(infer_response=self._response(request))
        self._end(context)


def serve(version: str, port: int, mode: str = "ok") -> tuple[grpc.Server, ModelServer]:
    """Starts a model server on 127.0.0.1:`port`; returns it and its servicer
    (whose `mode` may be changed while it runs)."""
    servicer = ModelServer(version, mode)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
    if server.add_insecure_port(f"127.0.0.1:{port}") != port:
        raise OSError(f"cannot listen on 127.0.0.1:{port}")
    server.start()
    return server, servicer


def infer_request(model: str = "model") -> pb.ModelInferRequest:
    tensor = pb.ModelInferRequest.InferInputTensor(
        name="input", datatype="FP32", shape=[1, 4], contents=pb.InferTensorContents(fp32_contents=[6.8, 2.8, 4.8, 1.4])
    )
    return pb.ModelInferRequest(model_name=model, inputs=[tensor])


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--port-v1", type=int, default=10011)
    p.add_argument("--port-v2", type=int, default=10012)
    p.add_argument("--infer", metavar="USER_ID", help="call ModelInfer through Envoy as this user, print the version")
    p.add_argument("--target", default="localhost:10000", help="Envoy's listener, for --infer")
    args = p.parse_args(argv)
    if args.infer is not None:
        with grpc.insecure_channel(args.target) as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            response = stub.ModelInfer(infer_request(), metadata=[("x-user-id", args.infer)], timeout=5)
        print(response.model_version)
        return 0
    servers = [serve("model-v1", args.port_v1)[0], serve("model-v2", args.port_v2)[0]]
    print(f"grpc models: model-v1 on :{args.port_v1}, model-v2 on :{args.port_v2}", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: [s.stop(0) for s in servers])
    for s in servers:
        s.wait_for_termination()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
