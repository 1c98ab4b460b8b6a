#!/usr/bin/env sh
# Regenerate the Python protobuf modules of gateway/flightsql from their .proto
# files. The generated modules are checked in next to the .proto they come from.
# Usage: scripts/gen_proto.sh  (from anywhere; uses .venv/bin/python if present)
set -eu
root="$(cd "$(dirname "$0")/.." && pwd)"
python="${PYTHON:-$root/.venv/bin/python}"
[ -x "$python" ] || python=python3
cd "$root/gateway/flightsql"
for proto in flight_sql.proto flight_session.proto; do
    "$python" -m grpc_tools.protoc -I. --python_out=. --pyi_out=. "$proto"
    # Generated code: keep linters and type checkers out of it (the .pyi stubs
    # are what mypy reads).
    for out in "${proto%.proto}_pb2.py" "${proto%.proto}_pb2.pyi"; do
        { printf '# ruff: noqa\n# mypy: ignore-errors\n'; cat "$out"; } > "$out.tmp"
        mv "$out.tmp" "$out"
    done
done
echo "generated: $(ls ./*_pb2.py* | tr '\n' ' ')"
