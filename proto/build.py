"""Generate the Python protobuf and gRPC modules next to the .proto files.

The .proto files import each other as ``cloudland_proto/v1/...``; the virtual
include path below maps that prefix onto this folder, so the generated imports
are ``cloudland_proto.v1.*`` (the installed import name) and never collide.
"""

import pathlib
import shutil
import sys
import tempfile

from grpc_tools import protoc

HERE = pathlib.Path(__file__).resolve().parent


def main() -> int:
    sources = sorted(HERE.glob("v1/*.proto"))
    with tempfile.TemporaryDirectory() as out:
        std_include = pathlib.Path(protoc.__file__).parent / "_proto"
        args = [
            "protoc",
            f"-Icloudland_proto={HERE}",
            f"-I{std_include}",
            f"--python_out={out}",
            f"--pyi_out={out}",
            f"--grpc_python_out={out}",
            *(f"cloudland_proto/{src.relative_to(HERE)}" for src in sources),
        ]
        if protoc.main(args) != 0:
            print("protoc failed", file=sys.stderr)
            return 1
        for generated in (pathlib.Path(out) / "cloudland_proto" / "v1").iterdir():
            shutil.copy(generated, HERE / "v1" / generated.name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
