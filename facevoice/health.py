"""`facevoice health --server HOST:PORT`: the gRPC health check (grpc.health.v1), exit 0 when
SERVING. What the Docker HEALTHCHECK and scripts run; Kubernetes probes speak gRPC health natively.

`health(HealthOptions(...))` answers the serving status; a server that cannot be reached (or
refuses the check) raises `facevoice.query.CallFailed` (exit 1)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from facevoice.cli import options
from facevoice.query import CallFailed


@dataclass(frozen=True)
class HealthOptions:
    server: str = "127.0.0.1:50051"  # host:port of `facevoice serve`
    service: str = "facevoice.v1.FaceVoice"  # '' for the whole server
    timeout: float = 3.0  # seconds


@dataclass(frozen=True)
class HealthResult:
    server: str
    service: str
    serving: str  # the status's name: SERVING, NOT_SERVING, SERVICE_UNKNOWN, UNKNOWN

    @property
    def status(self) -> int:
        """The command's exit status: 0 when SERVING."""
        return 0 if self.serving == "SERVING" else 1

    def summary(self) -> str:
        return f"{self.server} {self.service or '(server)'}: {self.serving}"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--server", default=HealthOptions.server, help="host:port of `facevoice serve`")
    p.add_argument("--service", default=HealthOptions.service, help="'' for the whole server")
    p.add_argument("--timeout", type=float, default=HealthOptions.timeout)


def health(opts: HealthOptions) -> HealthResult:
    """`health`: the server's answer to grpc.health.v1's Check for the service."""
    with grpc.insecure_channel(opts.server) as channel:
        try:
            status = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=opts.service), timeout=opts.timeout).status
        except grpc.RpcError as e:
            raise CallFailed(opts.server, e.code().name, e.details()) from e
    return HealthResult(opts.server, opts.service, health_pb2.HealthCheckResponse.ServingStatus.Name(status))


def run(args: argparse.Namespace) -> int:
    result = health(options(HealthOptions, args))
    print(result.summary())
    return result.status
