"""`facevoice health --server HOST:PORT`: the gRPC health check (grpc.health.v1), exit 0 when
SERVING. What the Docker HEALTHCHECK and scripts run; Kubernetes probes speak gRPC health natively."""

from __future__ import annotations

import argparse
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--server", default="127.0.0.1:50051", help="host:port of `facevoice serve`")
    p.add_argument("--service", default="facevoice.v1.FaceVoice", help="'' for the whole server")
    p.add_argument("--timeout", type=float, default=3.0)


def run(args: argparse.Namespace) -> int:
    stub = health_pb2_grpc.HealthStub(grpc.insecure_channel(args.server))
    try:
        status = stub.Check(health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout).status
    except grpc.RpcError as e:
        print(f"{args.server}: {e.code().name}: {e.details()}", file=sys.stderr)
        return 1
    name = health_pb2.HealthCheckResponse.ServingStatus.Name(status)
    print(f"{args.server} {args.service or '(server)'}: {name}")
    return 0 if status == health_pb2.HealthCheckResponse.SERVING else 1
