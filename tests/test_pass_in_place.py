"""Passes declare whether they work in place, apply_pass holds them to it, and the rewrite stage copies only
before a pass that does."""

from __future__ import annotations

from dataclasses import dataclass

import onnx
import pytest

from edgecompress.errors import InternalError
from edgecompress.graph._quant_common import copy_model
from edgecompress.graph.fix_shapes import FixShapes
from edgecompress.passes import STAGES, Pass, PassResult, apply_pass, register_pass, registry
from edgecompress.rewrite import rewrite_with_twin

from helpers import pass_context

MODEL = """
<ir_version: 9, opset_import: ["" : 17]>
g (float[batch, 4] x) => (float[batch, 4] y) {
  y = Relu(x)
}
"""


def tiny() -> onnx.ModelProto:
    return onnx.parser.parse_model(MODEL)


def relabel(model: onnx.ModelProto, name: str) -> onnx.ModelProto:
    model.graph.node[0].name = name
    return model


@dataclass(frozen=True)
class EditsInPlace(Pass):
    name = "test_edits_in_place"
    stage = "graph"
    in_place = True
    label: str = "in_place"

    def run(self, model, ctx) -> PassResult:
        return PassResult(relabel(model, self.label))


@dataclass(frozen=True)
class NewModel(Pass):
    name = "test_new_model"
    stage = "graph"
    in_place = False
    label: str = "new"
    lossy: bool = False

    def run(self, model, ctx) -> PassResult:
        return PassResult(relabel(copy_model(model), self.label), lossy=self.lossy)


@dataclass(frozen=True)
class EditsItsInputButSaysNot(Pass):
    name = "test_edits_its_input"
    stage = "graph"
    in_place = False

    def run(self, model, ctx) -> PassResult:
        result = copy_model(model)
        relabel(model, "edited")  # the bug: a not-in-place pass must leave its input as it was
        return PassResult(result)


@dataclass(frozen=True)
class ReturnsItsInputButSaysNot(Pass):
    name = "test_returns_its_input"
    stage = "graph"
    in_place = False

    def run(self, model, ctx) -> PassResult:
        return PassResult(model, fired=False)


@dataclass(frozen=True)
class ReturnsACopyButSaysInPlace(Pass):
    name = "test_returns_a_copy"
    stage = "graph"
    in_place = True

    def run(self, model, ctx) -> PassResult:
        return PassResult(copy_model(model))


def test_passes_that_keep_their_declaration_run():
    model = tiny()
    edited, _ = apply_pass(EditsInPlace(), model, pass_context())
    assert edited is model and model.graph.node[0].name == "in_place"
    new, _ = apply_pass(NewModel(), model, pass_context())
    assert new is not model and (model.graph.node[0].name, new.graph.node[0].name) == ("in_place", "new")


@pytest.mark.parametrize(
    "bad, message",
    [
        (
            EditsItsInputButSaysNot(),
            "pass 'test_edits_its_input' is declared not in place but changed the model it "
            "was given; work on a copy, or declare in_place = True",
        ),
        (
            ReturnsItsInputButSaysNot(),
            "pass 'test_returns_its_input' is declared not in place but returned the model it "
            "was given; return a new one, or declare in_place = True",
        ),
        (
            ReturnsACopyButSaysInPlace(),
            "pass 'test_returns_a_copy' is declared in place but returned a new model; "
            "return the model it was given, or declare in_place = False",
        ),
    ],
)
def test_apply_pass_catches_a_pass_that_breaks_its_in_place_declaration(bad, message):
    with pytest.raises(InternalError) as err:
        apply_pass(bad, tiny(), pass_context())
    assert str(err.value).startswith(message)


def test_every_registered_pass_declares_in_place():
    for stage in STAGES:
        for name, cls in registry(stage).items():
            assert isinstance(cls.in_place, bool), name


def test_registering_a_pass_without_the_declaration_is_refused():
    @dataclass(frozen=True)
    class Undeclared(Pass):
        name = "test_undeclared"
        stage = "graph"

    with pytest.raises(InternalError, match="pass Undeclared must declare in_place = True or False"):
        register_pass(Undeclared)
    assert "test_undeclared" not in registry("graph")


def test_fix_shapes_leaves_its_input_symbolic():
    model = tiny()
    before = model.SerializeToString()
    fixed, record = apply_pass(FixShapes(), model, pass_context())
    assert record.fired and model.SerializeToString() == before
    assert [d.dim_value for d in fixed.graph.input[0].type.tensor_type.shape.dim] == [1, 4]


def test_the_twin_is_the_graph_before_the_lossy_pass_without_a_copy_for_passes_that_are_not_in_place():
    graph = tiny()
    passes = [EditsInPlace(label="first"), NewModel(label="quantized", lossy=True), EditsInPlace(label="after")]
    rewrite = rewrite_with_twin(passes, graph, pass_context())
    assert rewrite.graph.graph.node[0].name == "after"
    # the graph as the lossy pass was given it (no copy: that pass leaves its input alone), then given the
    # in-place pass that followed the quantization
    assert rewrite.float_twin is graph and rewrite.float_twin is not rewrite.graph
    assert rewrite.float_twin.graph.node[0].name == "after"
    assert [r.name for r in rewrite.records] == ["test_edits_in_place", "test_new_model", "test_edits_in_place"]


def test_an_in_place_pass_before_the_lossy_one_does_not_reach_the_twin_through_a_shared_object():
    graph = tiny()
    passes = [NewModel(label="float"), EditsInPlace(label="edited"), NewModel(label="quantized", lossy=True)]
    rewrite = rewrite_with_twin(passes, graph, pass_context())
    assert rewrite.float_twin.graph.node[0].name == "edited"
    assert graph.graph.node[0].name == "" and rewrite.graph.graph.node[0].name == "quantized"
