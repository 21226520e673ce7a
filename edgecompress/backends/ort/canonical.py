"""Byte-reproducible `.ort` files: rewrite the kernel-type-string table of an ORT-format model in sorted order.

Before -> After: `InferenceSession{ort_version, model, kernel_type_str_resolver[entries in hash order]}` ->
the same session with the resolver's entries sorted by op id (and each entry's type strings sorted).

Why: ONNX Runtime serializes that table from a hash map whose iteration order changes from run to run
(measured: two conversions of one `model.onnx` gave `.ort` files differing only in bytes 48-2546, the
resolver, e.g. `:Range:11` followed by `:GreaterOrEqual:16` in one file and by `:Equal:13` in the other).
App builds cache and sign artifacts, so the same inputs must give the same bytes.

How: a FlatBuffer is written back to front, so the model subtree, written before the resolver and the
session table, sits in one self-contained block at the end of the file (its children at higher addresses,
relative offsets only). That block is copied verbatim to the end of a new buffer (same distance from the
end, so the same alignment) and the resolver, version string and session table are built again above it.
The file is then loaded by ONNX Runtime and verified like any other artifact.
"""

from __future__ import annotations

from pathlib import Path

_FILE_IDENTIFIER = b"ORTM"


def canonical_ort(data: bytes) -> bytes:
    """The same ORT-format model with its kernel-type-string resolver in sorted order."""
    import flatbuffers
    from onnxruntime.tools.ort_format_model.ort_flatbuffers_py.fbs import (
        ArgTypeAndIndex,
        InferenceSession,
        KernelTypeStrArgsEntry,
        KernelTypeStrResolver,
        OpIdKernelTypeStrArgsEntry,
    )

    buf = bytearray(data)
    session = InferenceSession.InferenceSession.GetRootAs(buf, 0)
    model = session.Model()
    resolver = session.KernelTypeStrResolver()
    if model is None or resolver is None:
        return data
    model_pos = model._tab.Pos
    vtable_pos = model_pos - flatbuffers.encode.Get(flatbuffers.packer.soffset, buf, model_pos)
    start = min(model_pos, vtable_pos)
    entries = sorted(
        (
            resolver.OpKernelTypeStrArgs(i).OpId(),
            sorted(
                (
                    entry.KernelTypeStr(),
                    [(entry.Args(k).ArgType(), entry.Args(k).Index()) for k in range(entry.ArgsLength())],
                )
                for entry in (
                    resolver.OpKernelTypeStrArgs(i).KernelTypeStrArgs(j)
                    for j in range(resolver.OpKernelTypeStrArgs(i).KernelTypeStrArgsLength())
                )
            ),
        )
        for i in range(resolver.OpKernelTypeStrArgsLength())
    )

    builder = flatbuffers.Builder(len(data) + 4096)
    block = bytes(buf[start:])
    builder.Prep(16, 0)  # `block` starts at the same distance from the end as before: same alignment
    builder.head -= len(block)
    builder.Bytes[builder.head : builder.head + len(block)] = block
    model_ref = len(buf) - model_pos  # FlatBuffers references count from the end of the buffer

    def vector(start_vector, items):
        start_vector(builder, len(items))
        for item in reversed(items):
            builder.PrependUOffsetTRelative(item)
        return builder.EndVector()

    op_entries = []
    for op_id, kernel_entries in entries:
        type_entries = []
        for type_str, args in kernel_entries:
            arg_refs = []
            for arg_type, index in args:
                ArgTypeAndIndex.Start(builder)
                ArgTypeAndIndex.AddArgType(builder, arg_type)
                ArgTypeAndIndex.AddIndex(builder, index)
                arg_refs.append(ArgTypeAndIndex.End(builder))
            args_ref = vector(KernelTypeStrArgsEntry.StartArgsVector, arg_refs)
            type_ref = builder.CreateString(type_str)
            KernelTypeStrArgsEntry.Start(builder)
            KernelTypeStrArgsEntry.AddKernelTypeStr(builder, type_ref)
            KernelTypeStrArgsEntry.AddArgs(builder, args_ref)
            type_entries.append(KernelTypeStrArgsEntry.End(builder))
        types_ref = vector(OpIdKernelTypeStrArgsEntry.StartKernelTypeStrArgsVector, type_entries)
        op_ref = builder.CreateString(op_id)
        OpIdKernelTypeStrArgsEntry.Start(builder)
        OpIdKernelTypeStrArgsEntry.AddOpId(builder, op_ref)
        OpIdKernelTypeStrArgsEntry.AddKernelTypeStrArgs(builder, types_ref)
        op_entries.append(OpIdKernelTypeStrArgsEntry.End(builder))
    ops_ref = vector(KernelTypeStrResolver.StartOpKernelTypeStrArgsVector, op_entries)
    KernelTypeStrResolver.Start(builder)
    KernelTypeStrResolver.AddOpKernelTypeStrArgs(builder, ops_ref)
    resolver_ref = KernelTypeStrResolver.End(builder)
    version_ref = builder.CreateString(session.OrtVersion())
    InferenceSession.Start(builder)
    InferenceSession.AddOrtVersion(builder, version_ref)
    InferenceSession.AddModel(builder, model_ref)
    InferenceSession.AddKernelTypeStrResolver(builder, resolver_ref)
    builder.Finish(InferenceSession.End(builder), file_identifier=_FILE_IDENTIFIER)
    return bytes(builder.Output())


def make_canonical(path: Path) -> None:
    path.write_bytes(canonical_ort(path.read_bytes()))
