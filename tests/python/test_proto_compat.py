#!/usr/bin/env python3
"""Check that Ferrum's .proto files describe exactly Triton's wire protocol.

Compiles core/proto/model_config.proto and server/proto/grpc_service.proto with grpcio-tools (``grpc_tools.protoc``) into a
FileDescriptorSet and compares it, element by element, with the descriptors
that ship inside tritonclient's generated Python modules
(``tritonclient.grpc.service_pb2`` / ``tritonclient.grpc.model_config_pb2``).

Compared: file names, packages, syntax, dependencies; every message (also
nested ones), field (name, number, type, label, type_name, oneof membership,
proto3_optional, default, extendee), oneof, map-entry flag, enum and enum
value, reserved ranges/names, service and method (name, input/output type,
client/server streaming). Declaration order of messages, enums, fields,
values and methods is compared too. Ignored: options other than map_entry,
comments/source info and json_name.

Usage:
    python3 tests/python/test_proto_compat.py        # prints differences, exit 1 if any
    pytest tests/python/test_proto_compat.py         # same check as a test

Set FERRUM_PROTO_DIR to check .proto files from other directories (several joined with
os.pathsep, searched in order).

Needs: pip install 'tritonclient[grpc]' grpcio-tools
"""

import importlib
import os
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
# model_config.proto lives with the core (ferrum-core), grpc_service.proto with the server's
# gRPC frontend; protoc searches both.
PROTO_DIRS = (
    os.environ["FERRUM_PROTO_DIR"].split(os.pathsep)
    if os.environ.get("FERRUM_PROTO_DIR")
    else [
        os.path.join(REPO_ROOT, "core", "proto"),
        os.path.join(REPO_ROOT, "server", "proto"),
    ]
)
PROTO_DIR = os.pathsep.join(PROTO_DIRS)

# Proto files of ours that must mirror a tritonclient descriptor, keyed by the
# file name both sides register under.
OUR_FILES = ["model_config.proto", "grpc_service.proto"]

# Where tritonclient keeps its generated modules (first that imports wins for
# each file; the descriptor is then looked up by file name).
TRITON_MODULE_CANDIDATES = {
    "model_config.proto": [
        "tritonclient.grpc.model_config_pb2",
        "tritonclient.grpc.model_config.model_config_pb2",
    ],
    "grpc_service.proto": [
        "tritonclient.grpc.service_pb2",
        "tritonclient.grpc.grpc_service_pb2",
    ],
}

# Optional extra files: compared only if tritonclient ships them.
OPTIONAL_FILES = {
    "health.proto": [
        "tritonclient.grpc.health_pb2",
        "tritonclient.grpc.health.health_pb2",
    ],
}

EXPECTED_PACKAGE = {
    "model_config.proto": "inference",
    "grpc_service.proto": "inference",
    "health.proto": "grpc.health.v1",
}


class MissingDependency(Exception):
    pass


# ---------------------------------------------------------------------------
# Loading descriptors
# ---------------------------------------------------------------------------


def _import_first(names):
    errors = []
    for name in names:
        try:
            return importlib.import_module(name), name
        except ImportError as exc:  # module layout differs between versions
            errors.append(f"{name}: {exc}")
    return None, "; ".join(errors)


def load_triton_descriptors():
    """Return ({file_name: FileDescriptorProto}, {file_name: module_name})."""
    try:
        from google.protobuf import descriptor_pb2
    except ImportError as exc:
        raise MissingDependency(f"protobuf not installed: {exc}")

    protos, where = {}, {}
    wanted = dict(TRITON_MODULE_CANDIDATES)
    for fname, cands in OPTIONAL_FILES.items():
        wanted[fname] = cands
    for fname, cands in wanted.items():
        mod, info = _import_first(cands)
        if mod is None:
            if fname in OPTIONAL_FILES:
                continue
            raise MissingDependency(
                f"cannot import tritonclient module for {fname} ({info}); "
                "install 'tritonclient[grpc]'"
            )
        fd = mod.DESCRIPTOR
        if fd.name != fname:
            # The module may be a wrapper; look the file up in its pool.
            fd = fd.pool.FindFileByName(fname)
        fdp = descriptor_pb2.FileDescriptorProto()
        fd.CopyToProto(fdp)
        protos[fname] = fdp
        where[fname] = mod.__name__
    return protos, where


def compile_ours(file_names):
    """Compile our .proto files with grpc_tools.protoc into descriptors."""
    try:
        from grpc_tools import protoc
        from google.protobuf import descriptor_pb2
    except ImportError as exc:
        raise MissingDependency(f"grpcio-tools not installed: {exc}")

    missing = [
        f
        for f in file_names
        if not any(os.path.exists(os.path.join(d, f)) for d in PROTO_DIRS)
    ]
    if missing:
        raise AssertionError(f"our proto files missing under {PROTO_DIR}: {missing}")

    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "ferrum.pb")
        args = (
            ["protoc"]
            + [f"--proto_path={d}" for d in PROTO_DIRS]
            + ["--include_imports", f"--descriptor_set_out={out}"]
            + list(file_names)
        )
        rc = protoc.main(args)
        if rc != 0:
            raise AssertionError(f"protoc failed (exit {rc}) compiling {file_names}")
        fds = descriptor_pb2.FileDescriptorSet()
        with open(out, "rb") as fh:
            fds.ParseFromString(fh.read())
    return {f.name: f for f in fds.file}


# ---------------------------------------------------------------------------
# Normalisation: descriptor protos -> plain comparable Python structures
# ---------------------------------------------------------------------------


def _enum_name(enum_type, number):
    return enum_type.values_by_number[number].name


def norm_field(field, oneof_names):
    from google.protobuf import descriptor_pb2

    fdp = descriptor_pb2.FieldDescriptorProto
    return {
        "number": field.number,
        "label": _enum_name(fdp.DESCRIPTOR.enum_types_by_name["Label"], field.label),
        "type": _enum_name(fdp.DESCRIPTOR.enum_types_by_name["Type"], field.type),
        "type_name": field.type_name,
        "extendee": field.extendee,
        "default_value": field.default_value,
        "oneof": oneof_names[field.oneof_index] if field.HasField("oneof_index") else None,
        "proto3_optional": field.proto3_optional,
    }


def norm_enum(enum):
    return {
        "values": {v.name: v.number for v in enum.value},
        "value_order": [v.name for v in enum.value],
        "reserved_ranges": [(r.start, r.end) for r in enum.reserved_range],
        "reserved_names": list(enum.reserved_name),
        "allow_alias": enum.options.allow_alias,
    }


def norm_message(msg):
    oneof_names = [o.name for o in msg.oneof_decl]
    return {
        "map_entry": msg.options.map_entry,
        "fields": {f.name: norm_field(f, oneof_names) for f in msg.field},
        "field_order": [f.name for f in msg.field],
        "oneofs": {
            name: [f.name for f in msg.field if f.HasField("oneof_index") and f.oneof_index == i]
            for i, name in enumerate(oneof_names)
        },
        "oneof_order": oneof_names,
        "nested_messages": {m.name: norm_message(m) for m in msg.nested_type},
        "nested_message_order": [m.name for m in msg.nested_type],
        "enums": {e.name: norm_enum(e) for e in msg.enum_type},
        "enum_order": [e.name for e in msg.enum_type],
        "extensions": {f.name: norm_field(f, oneof_names) for f in msg.extension},
        "extension_ranges": [(r.start, r.end) for r in msg.extension_range],
        "reserved_ranges": [(r.start, r.end) for r in msg.reserved_range],
        "reserved_names": list(msg.reserved_name),
    }


def norm_service(svc):
    return {
        "methods": {
            m.name: {
                "input_type": m.input_type,
                "output_type": m.output_type,
                "client_streaming": m.client_streaming,
                "server_streaming": m.server_streaming,
            }
            for m in svc.method
        },
        "method_order": [m.name for m in svc.method],
    }


def norm_file(fdp):
    return {
        "name": fdp.name,
        "package": fdp.package,
        "syntax": fdp.syntax or "proto2",
        "dependency": list(fdp.dependency),
        "public_dependency": list(fdp.public_dependency),
        "weak_dependency": list(fdp.weak_dependency),
        "messages": {m.name: norm_message(m) for m in fdp.message_type},
        "message_order": [m.name for m in fdp.message_type],
        "enums": {e.name: norm_enum(e) for e in fdp.enum_type},
        "enum_order": [e.name for e in fdp.enum_type],
        "services": {s.name: norm_service(s) for s in fdp.service},
        "service_order": [s.name for s in fdp.service],
        "extensions": {f.name: norm_field(f, []) for f in fdp.extension},
    }


# ---------------------------------------------------------------------------
# Recursive diff
# ---------------------------------------------------------------------------


def diff(ours, theirs, path, out):
    """Append a human readable line to `out` for every difference."""
    if isinstance(ours, dict) and isinstance(theirs, dict):
        for key in theirs:
            if key not in ours:
                out.append(f"{path}.{key}: missing in ours (triton has {_short(theirs[key])})")
        for key in ours:
            if key not in theirs:
                out.append(f"{path}.{key}: extra in ours ({_short(ours[key])}), not in triton")
        for key in theirs:
            if key in ours:
                diff(ours[key], theirs[key], f"{path}.{key}", out)
    elif ours != theirs:
        out.append(f"{path}: ours={ours!r} triton={theirs!r}")


def _short(value):
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


def compare(ours_by_file, triton_by_file):
    diffs = []
    for fname, theirs in triton_by_file.items():
        expected_pkg = EXPECTED_PACKAGE.get(fname)
        if expected_pkg is not None and theirs.package != expected_pkg:
            diffs.append(f"{fname}: triton package is {theirs.package!r}, expected {expected_pkg!r}")
        if fname not in ours_by_file:
            diffs.append(f"{fname}: tritonclient has this file but we do not")
            continue
        diff(norm_file(ours_by_file[fname]), norm_file(theirs), fname, diffs)
    for fname, ours in ours_by_file.items():
        expected_pkg = EXPECTED_PACKAGE.get(fname)
        if expected_pkg is not None and ours.package != expected_pkg:
            diffs.append(f"{fname}: our package is {ours.package!r}, expected {expected_pkg!r}")
        if fname not in triton_by_file:
            diffs.append(f"{fname}: we compiled this file but tritonclient has no counterpart")
    return diffs


def _count(fdp):
    msgs = fields = enums = values = methods = 0
    stack = list(fdp.message_type)
    enum_list = list(fdp.enum_type)
    while stack:
        m = stack.pop()
        msgs += 1
        fields += len(m.field)
        stack.extend(m.nested_type)
        enum_list.extend(m.enum_type)
    enums = len(enum_list)
    values = sum(len(e.value) for e in enum_list)
    methods = sum(len(s.method) for s in fdp.service)
    return msgs, fields, enums, values, methods


def run_check(verbose=True):
    """Return the list of differences (empty when everything matches)."""
    triton, where = load_triton_descriptors()
    ours_files = list(OUR_FILES)
    if "health.proto" in triton:
        ours_files.append("health.proto")
    ours = compile_ours(ours_files)

    if verbose:
        for fname in sorted(triton):
            msgs, fields, enums, values, methods = _count(triton[fname])
            print(
                f"triton {fname} (from {where[fname]}, package {triton[fname].package}): "
                f"{msgs} messages, {fields} fields, {enums} enums, "
                f"{values} enum values, {methods} rpc methods"
            )
        print(f"ours compiled from {PROTO_DIR}: {', '.join(sorted(ours))}")

    diffs = compare(ours, triton)
    if verbose:
        for line in diffs:
            print("DIFF", line)
        print(f"{len(diffs)} difference(s)")
    return diffs


def test_proto_matches_tritonclient():
    # grpcio-tools and tritonclient are in requirements.txt: a missing one fails the test.
    diffs = run_check(verbose=True)
    assert not diffs, f"{len(diffs)} proto difference(s):\n" + "\n".join(diffs)


def main():
    try:
        diffs = run_check(verbose=True)
    except MissingDependency as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 2
    return 1 if diffs else 0


if __name__ == "__main__":
    sys.exit(main())
