"""A proxyless gRPC client: resolves xds:///TARGET through the control plane
named in GRPC_XDS_BOOTSTRAP and calls the health service behind it."""
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

target = sys.argv[1]
channel = grpc.insecure_channel(f"xds:///{target}")
stub = health_pb2_grpc.HealthStub(channel)
resp = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=20, wait_for_ready=True)
print("status", health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status), flush=True)
