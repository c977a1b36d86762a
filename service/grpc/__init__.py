"""The typed gRPC API of tuneserve: generated stubs (`gen/`), codegen and the grpc.aio transport.

    python -m service.grpc.codegen        # regenerate gen/ after editing proto/tuneserve/v1/*.proto
"""
