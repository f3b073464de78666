"""Generated protobuf messages of the agent's control service (do not edit by hand).

Regenerate from the repository root after editing ``dpdpu/agent/control.proto``::

    pip install grpcio-tools==1.85.1 && python -m grpc_tools.protoc --proto_path=dpdpu/agent/_proto=dpdpu/agent \
        --python_out=. --pyi_out=. dpdpu/agent/control.proto

The generated code checks the protobuf runtime (``protobuf>=7.35.1``, see pyproject).
"""
