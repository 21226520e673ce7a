"""The backends' structure: each runtime is one Backend object, and a TFLite op lowering is one file under ops/.

These tests pin the seams the structure issue built, so that the next runtime, artifact kind or op lands
in one place: the facts other stages read (kinds, suffixes, runners) come from the Backend objects, the
op registry is a leaf module, every ops/ file imports on its own (no import cycle), and a new op file
dropped into ops/ is found with no list to edit.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
from onnx import TensorProto, helper

from edgecompress.backends import artifact_kinds, artifact_suffixes, backend_for, backend_for_suffix, backends
from edgecompress.measure.runner import runner_for, runner_script
from edgecompress.paths import runtimes_dir

OPS_MODULES = ("contrib", "dynamic_int8", "int4", "sequence", "standard", "static_int8")


def test_each_runtime_is_one_backend_owning_its_kinds_suffixes_and_runner():
    assert list(backends()) == ["onnxruntime", "litert"]
    assert artifact_kinds() == ("onnx", "ort", "tflite")
    assert artifact_suffixes() == (".onnx", ".ort", ".tflite")
    for backend in backends().values():
        assert runner_script(backend.runner).parent == runtimes_dir()
        for suffix in backend.suffixes.values():
            assert backend_for_suffix(suffix.upper()) is backend
            assert runner_for(f"dist/model{suffix}") == backend.runner
    assert backend_for("litert").exact_writer is not None and backend_for("onnxruntime").exact_writer is None
    assert backend_for_suffix(".pt") is None


def test_minimum_versions_come_from_each_backend():
    assert set(backend_for("onnxruntime").minimum_version("onnx", 17)) == {"onnxruntime", "why"}
    assert backend_for("onnxruntime").minimum_version("onnx", 17)["onnxruntime"] == "1.13"
    assert "ai-edge-litert" in backend_for("litert").minimum_version("tflite", 17)


def _fresh_import(module: str) -> list[str]:
    """Import `module` first in a new interpreter; return the backend modules that came with it."""
    code = (
        f"import sys, {module}; print(sorted(m for m in sys.modules if m.startswith('edgecompress.backends.tflite.')))"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    return eval(out)  # a printed list of module names


def test_the_op_registry_is_a_leaf_that_does_not_pull_in_the_lowering():
    loaded = _fresh_import("edgecompress.backends.tflite.registry")
    assert "edgecompress.backends.tflite.lowering" not in loaded
    assert not [m for m in loaded if ".ops." in m]


@pytest.mark.parametrize("name", OPS_MODULES)
def test_every_op_file_imports_on_its_own(name):
    """With the registry inside the lowering, importing an op file first failed or half-initialised."""
    loaded = _fresh_import(f"edgecompress.backends.tflite.ops.{name}")
    assert f"edgecompress.backends.tflite.ops.{name}" in loaded


SOFTSIGN_FILE = '''
"""Softsign, written for this test as a new op family would be: one file under ops/."""

import numpy as np

from edgecompress.backends.tflite.registry import lowers


@lowers("Softsign")
def softsign(lw, node) -> None:
    """`Softsign(X)` -> `DIV(X, ADD(ABS(X), 1))`."""
    x = lw.value(node.input[0])
    shape = lw.shape(node.input[0])
    magnitude = lw.emit("ABS", [x], shape=shape, dtype=np.float32)
    one = lw.const(np.ones((1,), np.float32), key="softsign_one")
    denominator = lw.emit("ADD", [magnitude, one], shape=shape, dtype=np.float32, options=lw.options("Add"))
    lw.emit("DIV", [x, denominator], out=node.output[0], options=lw.options("Div"))
'''


def test_adding_an_op_lowering_is_one_file_under_ops(tmp_path, monkeypatch):
    pytest.importorskip("ai_edge_litert")
    from edgecompress.backends.tflite import ops
    from edgecompress.backends.tflite.artifact import load_interpreter
    from edgecompress.backends.tflite.lowering import lower_to_tflite
    from edgecompress.backends.tflite.registry import LOWERINGS
    from edgecompress.errors import UserError

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])
    model = helper.make_model(
        helper.make_graph([helper.make_node("Softsign", ["x"], ["y"])], "g", [x], [y]),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    model.ir_version = 9
    with pytest.raises(UserError, match="Softsign"):  # no lowering yet
        lower_to_tflite(model)

    (tmp_path / "softsign.py").write_text(textwrap.dedent(SOFTSIGN_FILE))
    monkeypatch.setattr(ops, "__path__", [*ops.__path__, str(tmp_path)])
    monkeypatch.delitem(LOWERINGS, ("", "Softsign"), raising=False)
    monkeypatch.delitem(sys.modules, "edgecompress.backends.tflite.ops.softsign", raising=False)
    try:
        path = tmp_path / "model.tflite"
        path.write_bytes(lower_to_tflite(model))
    finally:
        LOWERINGS.pop(("", "Softsign"), None)
        sys.modules.pop("edgecompress.backends.tflite.ops.softsign", None)
    interpreter = load_interpreter(path, threads=1)
    values = np.array([[-2.0, 0.0, 1.0], [3.0, -0.5, 8.0]], np.float32)
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], values)
    interpreter.invoke()
    got = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    np.testing.assert_allclose(got, values / (1 + np.abs(values)), rtol=1e-6)
