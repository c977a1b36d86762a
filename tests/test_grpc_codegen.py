"""The committed gRPC stubs match the proto: regenerate into a temp dir and compare bytes.

    pytest tests/test_grpc_codegen.py
"""

from __future__ import annotations

import shutil

from service.grpc import codegen


def test_committed_stubs_match_proto():
    stale = codegen.stale_files()
    assert stale == [], f"stubs out of date with proto/ (run `make proto`): {stale}"


def test_edited_proto_is_detected_as_stale(tmp_path):
    proto_root = tmp_path / "proto"
    shutil.copytree(codegen.PROTO_ROOT, proto_root)
    target = proto_root / codegen.PROTO_PACKAGE / "admin.proto"
    target.write_text(target.read_text().replace("  bool force = 2;\n", "  bool force = 2;\n  string reason = 3;\n"))
    stale = codegen.stale_files(proto_root=proto_root)
    assert "tuneserve/v1/admin_pb2.py" in stale and "tuneserve/v1/admin_pb2.pyi" in stale


def test_generated_package_imports_under_service_namespace(tmp_path):
    files = codegen.generate(tmp_path / "gen")
    texts = "".join(p.read_text() for p in files if p.suffix in {".py", ".pyi"})
    assert "from tuneserve.v1 import" not in texts
    from service.grpc.gen.tuneserve.v1 import admin_pb2_grpc, inference_pb2, inference_pb2_grpc

    assert inference_pb2.DESCRIPTOR.name == "tuneserve/v1/inference.proto"
    assert hasattr(inference_pb2_grpc, "InferenceServicer") and hasattr(admin_pb2_grpc, "AdminServicer")
    request = inference_pb2.GenerateRequest(model="m", prompt="hi")
    assert inference_pb2.GenerateRequest.FromString(request.SerializeToString()).WhichOneof("input") == "prompt"
