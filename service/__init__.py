"""tuneserve serving: one serving class (`service.core.ServingCore`) over a batched multi-adapter
engine (`service.engine`), exposed by thin transports (REST in `service.http`, gRPC in
`service.grpc`) and deployed on Ray Serve (`service.app:app_builder`).

    tuneserve serve service/configs/serve.yaml artifacts_dir=artifacts port=8000
"""
