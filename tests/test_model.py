"""Intake: every bad checkpoint or .onnx is one `error:` line on stderr with exit 2, and nothing is written.

Failures happen before the pipeline creates its output folder, so these run in well under a second each
(after the first, which pays for importing torch and transformers).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgecompress.architectures import architectures
from edgecompress.cli import main

from conftest import user_error

# the heads of the BERT family
SUPPORTED = "BertForSequenceClassification, BertForTokenClassification, BertForQuestionAnswering, BertModel"


# ---- helpers ------------------------------------------------------------------------------------------------


def run_export(model, device, data, out: Path, *extra):
    return CliRunner().invoke(
        main,
        [
            "export",
            str(model),
            "--device",
            str(device),
            "--data",
            str(data),
            "-o",
            str(out),
            "--no-measure",
            *map(str, extra),
        ],
    )


@pytest.fixture
def ckpt(tiny_checkpoint, tmp_path) -> Path:
    """A private copy of the tiny classifier checkpoint, to break."""
    return Path(shutil.copytree(tiny_checkpoint, tmp_path / "ckpt"))


@pytest.fixture
def out(tmp_path) -> Path:
    return tmp_path / "out"


def edit_config(folder: Path, **changes) -> None:
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))


def vocab_size(folder: Path) -> int:
    return json.loads((folder / "config.json").read_text())["vocab_size"]


# ---- checkpoint folders -------------------------------------------------------------------------------------


def test_missing_model_path(tmp_path, tiny_device, tiny_data, out):
    line = user_error(run_export(tmp_path / "nope", tiny_device, tiny_data, out), out)
    assert line == (
        f"error: {tmp_path / 'nope'}: model path does not exist; expected a checkpoint folder "
        f"(config.json, weights, tokenizer) or an .onnx file"
    )


def test_empty_checkpoint_folder(tmp_path, tiny_device, tiny_data, out):
    empty = tmp_path / "empty"
    empty.mkdir()
    line = user_error(run_export(empty, tiny_device, tiny_data, out), out)
    assert line == (
        f"error: {empty}: checkpoint folder is empty; expected config.json, model.safetensors "
        f"(or pytorch_model.bin), tokenizer files"
    )


def test_config_missing(ckpt, tiny_device, tiny_data, out):
    (ckpt / "config.json").unlink()
    line = user_error(run_export(ckpt, tiny_device, tiny_data, out), out)
    assert line == f"error: {ckpt}: config.json is missing; hint: point at the folder written by save_pretrained()"


def test_config_malformed_json(ckpt, tiny_device, tiny_data, out):
    (ckpt / "config.json").write_text('{"model_type": "bert",')
    line = user_error(run_export(ckpt, tiny_device, tiny_data, out), out)
    assert line.startswith(f"error: {ckpt / 'config.json'}: config.json is not valid JSON (")
    assert "line 1 column" in line


def test_config_not_an_object(ckpt, tiny_device, tiny_data, out):
    (ckpt / "config.json").write_text("[1, 2]")
    line = user_error(run_export(ckpt, tiny_device, tiny_data, out), out)
    assert line == f"error: {ckpt / 'config.json'}: config.json is not a JSON object"


def test_unsupported_architecture_names_the_supported_ones(ckpt, tiny_device, tiny_data, out):
    edit_config(ckpt, architectures=["GPT2LMHeadModel"], model_type="gpt2")
    line = user_error(run_export(ckpt, tiny_device, tiny_data, out), out)
    families = ", ".join(sorted(architectures()))
    assert line == (
        f"error: {ckpt / 'config.json'}: unsupported model family 'gpt2'; expected model_type one of {families}; "
        "hint: convert the model to one of these families, or export it to .onnx and pass the file"
    )


def test_unsupported_head_of_a_known_family_names_the_supported_heads(ckpt, tiny_device, tiny_data, out):
    edit_config(ckpt, architectures=["BertForMaskedLM"])
    line = user_error(run_export(ckpt, tiny_device, tiny_data, out), out)
    assert line == (
        f"error: {ckpt / 'config.json'}: unsupported head 'BertForMaskedLM' for BERT (model_type 'bert'); "
        f"expected one of {SUPPORTED}"
    )


def test_config_field_of_wrong_type(ckpt, tiny_device, tiny_data, out):
    edit_config(ckpt, hidden_size="32")
    line = user_error(run_export(ckpt, tiny_device, tiny_data, out), out)
    assert line == f"error: {ckpt / 'config.json'}: field 'hidden_size' must be a positive integer, got '32'"


def test_heads_that_do_not_divide_hidden_size(ckpt, tiny_device, tiny_data, out):
    # Used to escape as a ValueError traceback from transformers' BertSelfAttention.
    edit_config(ckpt, num_attention_heads=3)
    line = user_error(run_export(ckpt, tiny_device, tiny_data, out), out)
    assert line == (
        f"error: {ckpt / 'config.json'}: hidden_size 32 is not a multiple of num_attention_heads 3; "
        f"hint: is config.json from the same checkpoint as the weights?"
    )


def test_weights_do_not_match_hidden_size(ckpt, tiny_device, tiny_data, out):
    n = vocab_size(ckpt)
    edit_config(ckpt, hidden_size=64)
    line = user_error(run_export(ckpt, tiny_device, tiny_data, out), out)
    assert line == (
        f"error: {ckpt}: weights do not match the config: 'bert.embeddings.word_embeddings.weight' "
        f"has shape ({n}, 32); expected ({n}, 64) from config.json"
    )


def test_weights_do_not_match_vocab_size(ckpt, tiny_device, tiny_data, out):
    n = vocab_size(ckpt)
    edit_config(ckpt, vocab_size=200)
    line = user_error(run_export(ckpt, tiny_device, tiny_data, out), out)
    assert line == (
        f"error: {ckpt}: weights do not match the config: 'bert.embeddings.word_embeddings.weight' "
        f"has shape ({n}, 32); expected (200, 32) from config.json"
    )


def test_weights_do_not_match_label_count(ckpt, tiny_device, tiny_data, out):
    edit_config(ckpt, id2label={"0": "a", "1": "b", "2": "c"}, label2id={"a": 0, "b": 1, "c": 2})
    line = user_error(run_export(ckpt, tiny_device, tiny_data, out), out)
    assert line == (
        f"error: {ckpt}: weights do not match the config: 'classifier.weight' has shape (2, 32); "
        f"expected (3, 32) from config.json"
    )


def test_missing_tensor(ckpt, tiny_device, tiny_data, out):
    from safetensors.torch import load_file, save_file

    state = load_file(str(ckpt / "model.safetensors"))
    del state["classifier.weight"]
    save_file(state, str(ckpt / "model.safetensors"))
    line = user_error(run_export(ckpt, tiny_device, tiny_data, out), out)
    assert line == (
        f"error: {ckpt}: weights do not match the config: tensor 'classifier.weight' is missing; "
        f"hint: is config.json from the same checkpoint as the weights?"
    )


def test_more_layers_in_config_than_in_weights(ckpt, tiny_device, tiny_data, out):
    edit_config(ckpt, num_hidden_layers=3)
    line = user_error(run_export(ckpt, tiny_device, tiny_data, out), out)
    assert "tensor 'bert.encoder.layer.2.attention.self.query.weight' is missing" in line


def test_no_weights_file(ckpt, tiny_device, tiny_data, out):
    (ckpt / "model.safetensors").unlink()
    line = user_error(run_export(ckpt, tiny_device, tiny_data, out), out)
    assert line == (
        f"error: {ckpt}: no weights found; expected model.safetensors, model.safetensors.index.json "
        f"with its shards, or pytorch_model.bin"
    )


def test_corrupt_safetensors(ckpt, tiny_device, tiny_data, out):
    (ckpt / "model.safetensors").write_bytes(b"\x00" * 7 + b"not a header")
    line = user_error(run_export(ckpt, tiny_device, tiny_data, out), out)
    assert line.startswith(f"error: {ckpt / 'model.safetensors'}: cannot read weights (")


def test_tokenizer_missing(ckpt, tiny_device, tiny_data, out):
    for name in ("tokenizer.json", "vocab.txt", "tokenizer_config.json"):
        (ckpt / name).unlink()
    line = user_error(run_export(ckpt, tiny_device, tiny_data, out), out)
    assert line == (
        f"error: {ckpt}: tokenizer is missing; expected one of tokenizer.json, vocab.txt in {ckpt}; "
        f"hint: save the tokenizer with tokenizer.save_pretrained() next to the model"
    )


def test_tokenizer_config_alone_is_not_a_tokenizer(ckpt, tiny_device, tiny_data, out):
    (ckpt / "tokenizer.json").unlink()
    (ckpt / "vocab.txt").unlink()
    line = user_error(run_export(ckpt, tiny_device, tiny_data, out), out)
    assert f"{ckpt}: tokenizer is missing" in line


def test_corrupt_tokenizer_json(ckpt, tiny_device, tiny_data, out):
    (ckpt / "tokenizer.json").write_text("{nope")
    (ckpt / "vocab.txt").unlink()
    line = user_error(run_export(ckpt, tiny_device, tiny_data, out), out)
    assert line.startswith(f"error: {ckpt}: cannot load the tokenizer (")


# ---- pytorch_model.bin ----------------------------------------------------------------------------------------


def _to_bin(folder: Path, state) -> None:
    import torch

    (folder / "model.safetensors").unlink()
    torch.save(state, str(folder / "pytorch_model.bin"))


def test_bin_checkpoint_loads_with_weights_only_and_exports(ckpt, tiny_device, tiny_data, out):
    from safetensors.torch import load_file

    _to_bin(ckpt, load_file(str(ckpt / "model.safetensors")))
    result = run_export(ckpt, tiny_device, tiny_data, out)
    assert result.exit_code == 0, result.output
    folder = out / "tinyphone"
    assert (folder / "model.onnx").is_file() and (folder / "model.ort").is_file()
    report = json.loads((folder / "report.json").read_text())
    assert report["passed"] is True
    assert all(a["parity"]["passed"] for a in report["artifacts"])


def test_bin_with_code_in_the_pickle_is_refused_without_running_it(ckpt, tmp_path, tiny_device, tiny_data, out):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    _to_bin(ckpt, {"bert.embeddings.word_embeddings.weight": Payload()})
    line = user_error(run_export(ckpt, tiny_device, tiny_data, out), out)
    assert not marker.exists()
    assert line.startswith(
        f"error: {ckpt / 'pytorch_model.bin'}: cannot read weights safely "
        f"(torch.load(weights_only=True) refused it: Unsupported global: "
    )
    assert line.endswith("; hint: re-save the checkpoint with safetensors")


def test_corrupt_bin_is_one_line(ckpt, tiny_device, tiny_data, out):
    (ckpt / "model.safetensors").unlink()
    (ckpt / "pytorch_model.bin").write_bytes(bytes(range(256)) * 4)
    line = user_error(run_export(ckpt, tiny_device, tiny_data, out), out)
    assert line.startswith(f"error: {ckpt / 'pytorch_model.bin'}: cannot read weights safely (")


@pytest.mark.parametrize(
    "payload, found", [("tensor", "a Tensor"), ("list", "a list"), ("nested", "entry 'state_dict' is a dict")]
)
def test_bin_that_is_not_a_state_dict(ckpt, tiny_device, tiny_data, out, payload, found):
    # A bare tensor or a list used to escape as an AttributeError traceback.
    import torch

    value = {"tensor": torch.zeros(3), "list": [1, 2], "nested": {"state_dict": {"w": torch.zeros(1)}}}[payload]
    _to_bin(ckpt, value)
    line = user_error(run_export(ckpt, tiny_device, tiny_data, out), out)
    assert line == (
        f"error: {ckpt / 'pytorch_model.bin'}: not a state dict of named tensors ({found}); "
        f"expected a file written by torch.save(model.state_dict()) or save_pretrained()"
    )


# ---- loading, without the CLI ----------------------------------------------------------------------------------


def test_bundle_of_a_classifier_and_of_an_encoder(tiny_checkpoint, tiny_encoder):
    from edgecompress.intake.model import CLASSIFICATION, EMBEDDING, load_bundle

    classifier = load_bundle(tiny_checkpoint)
    assert (classifier.kind, classifier.labels, classifier.output_name) == (
        CLASSIFICATION,
        ["negative", "positive"],
        "logits",
    )
    assert (classifier.num_heads, classifier.hidden_size, classifier.num_layers) == (2, 32, 2)
    assert classifier.tokenizer_settings.lowercase is True
    assert classifier.tokenizer_settings.max_length == 64
    assert set(classifier.tokenizer_settings.files) >= {"tokenizer.json", "vocab.txt"}
    encoder = load_bundle(tiny_encoder)
    assert (encoder.kind, encoder.labels, encoder.output_name) == (EMBEDDING, None, "sentence_embedding")


def test_loaded_weights_are_the_checkpoint_weights(tiny_checkpoint):
    """Strict hand-matching must load every tensor: outputs equal transformers' own loading."""
    import torch
    from transformers import BertForSequenceClassification

    from edgecompress.intake.model import load_bundle

    bundle = load_bundle(tiny_checkpoint)
    reference = BertForSequenceClassification.from_pretrained(str(tiny_checkpoint)).eval()
    encoded = bundle.tokenizer(
        ["a very good movie", "the worst film ever"], padding="max_length", max_length=16, return_tensors="pt"
    )
    with torch.no_grad():
        expected = reference(**encoded).logits
        got = bundle.module(encoded["input_ids"], encoded["attention_mask"], encoded["token_type_ids"])
    got = got[0] if isinstance(got, (tuple, list)) else got
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_prefixless_weights_are_aligned(ckpt):
    """Sentence-transformers style names (no `bert.` prefix) load into a classifier shell."""
    import torch
    from safetensors.torch import load_file, save_file

    from edgecompress.intake.model import load_bundle

    state = load_file(str(ckpt / "model.safetensors"))
    original = load_bundle(ckpt)
    save_file({k.removeprefix("bert."): v for k, v in state.items()}, str(ckpt / "model.safetensors"))
    aligned = load_bundle(ckpt)
    ids = torch.tensor([[2, 10, 11, 3] + [0] * 12])
    mask, types = (ids > 0).long(), torch.zeros_like(ids)
    with torch.no_grad():
        a, b = original.module(ids, mask, types), aligned.module(ids, mask, types)
    torch.testing.assert_close(a, b)


# ---- .onnx files -------------------------------------------------------------------------------------------------


def test_onnx_that_is_random_bytes(tmp_path, tiny_device, tiny_data, out):
    path = tmp_path / "model.onnx"
    path.write_bytes(bytes((i * 97 + 13) % 256 for i in range(4096)))
    line = user_error(run_export(path, tiny_device, tiny_data, out), out)
    assert line == (
        f"error: {path}: not a readable ONNX model (DecodeError); "
        f"expected a file written by torch.onnx.export or another ONNX exporter"
    )


def test_onnx_that_is_a_text_file(tmp_path, tiny_device, tiny_data, out):
    path = tmp_path / "model.onnx"
    path.write_text("this is not a model\n")
    line = user_error(run_export(path, tiny_device, tiny_data, out), out)
    assert line == (
        f"error: {path}: not a readable ONNX model (DecodeError); "
        f"expected a file written by torch.onnx.export or another ONNX exporter"
    )


def test_empty_onnx_file(tmp_path, tiny_device, tiny_data, out):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"")
    line = user_error(run_export(path, tiny_device, tiny_data, out), out)
    assert line == f"error: {path}: not an ONNX model: the graph has no nodes"


def _image_model(path: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, [1, 3, 8, 8])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 3, 8, 8])
    graph = helper.make_graph([helper.make_node("Relu", ["pixel_values"], ["logits"])], "image", [x], [y])
    onnx.save(helper.make_model(graph), str(path))
    return path


def test_onnx_with_unsupported_inputs(tmp_path, tiny_checkpoint, tiny_device, tiny_data, out):
    path = _image_model(tmp_path / "image.onnx")
    line = user_error(run_export(path, tiny_device, tiny_data, out, "--tokenizer", tiny_checkpoint), out)
    assert line == (
        f"error: {path}: unsupported model inputs ['pixel_values']; "
        f"expected text-model inputs among input_ids, attention_mask, token_type_ids"
    )


def test_onnx_without_a_tokenizer(tmp_path, tiny_device, tiny_data, out):
    import onnx
    from onnx import TensorProto, helper

    ids = helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, 16])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 16])
    graph = helper.make_graph(
        [helper.make_node("Cast", ["input_ids"], ["logits"], to=TensorProto.FLOAT)], "g", [ids], [y]
    )
    folder = tmp_path / "lone"
    folder.mkdir()
    path = folder / "model.onnx"
    onnx.save(helper.make_model(graph), str(path))
    line = user_error(run_export(path, tiny_device, tiny_data, out), out)
    assert line == (
        f"error: {path}: tokenizer is missing; expected one of tokenizer.json, vocab.txt in {folder}; "
        f"hint: save the tokenizer with tokenizer.save_pretrained() next to the model"
    )


# ---- issue 17: checkpoints that must load ----------------------------------------------------------------------


def _logits(bundle):
    import torch

    ids = torch.tensor([[2, 10, 11, 3] + [0] * 12])
    with torch.no_grad():
        return bundle.module(ids, (ids > 0).long(), torch.zeros_like(ids))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_checkpoint_loads_computing_in_float32(ckpt, dtype):
    import torch
    from safetensors.torch import load_file, save_file

    from edgecompress.intake.model import load_bundle

    state = load_file(str(ckpt / "model.safetensors"))
    save_file({k: v.to(getattr(torch, dtype)) for k, v in state.items()}, str(ckpt / "model.safetensors"))
    bundle = load_bundle(ckpt)
    assert {p.dtype for p in bundle.module.parameters()} == {torch.float32}
    assert _logits(bundle).dtype == torch.float32


def test_half_precision_checkpoint_exports(ckpt, tiny_device, tiny_data, out):
    """LiteRT refused the half-precision graph ('cannot load model.tflite ... this is a bug') before."""
    import torch
    from safetensors.torch import load_file, save_file

    state = load_file(str(ckpt / "model.safetensors"))
    save_file({k: v.to(torch.bfloat16) for k, v in state.items()}, str(ckpt / "model.safetensors"))
    result = run_export(ckpt, tiny_device, tiny_data, out)
    assert result.exit_code == 0, (result.output, result.exception)
    assert (out / "tinyphone" / "model.tflite").is_file()


def test_sharded_checkpoint_loads(ckpt, tiny_checkpoint):
    from transformers import BertForSequenceClassification

    from edgecompress.intake.model import load_bundle

    model = BertForSequenceClassification.from_pretrained(str(tiny_checkpoint), local_files_only=True)
    (ckpt / "model.safetensors").unlink()
    model.save_pretrained(str(ckpt), safe_serialization=True, max_shard_size="50KB")
    assert (ckpt / "model.safetensors.index.json").is_file()
    import torch

    torch.testing.assert_close(_logits(load_bundle(ckpt)), _logits(load_bundle(tiny_checkpoint)))


def test_a_vocab_listing_a_token_twice_is_refused_by_its_highest_id(tmp_path):
    # Found by a helper: conftest's vocab.txt listed "a" twice, so 110 distinct tokens were numbered up to 110
    # for a table of 110 rows, and an export of a text with that token ended in an internal IndexError.
    from transformers import BertTokenizerFast

    from edgecompress.errors import UserError
    from edgecompress.intake.model import check_vocabulary

    lines = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "b", "a"]  # vocab.txt read as conftest reads it
    tokenizer = BertTokenizerFast(vocab={token: i for i, token in enumerate(lines)}, do_lower_case=True)
    assert tokenizer.convert_tokens_to_ids("a") == 7 and len(tokenizer) == 7
    with pytest.raises(UserError, match="emits ids up to 7 .7 distinct tokens: one listed twice in vocab.txt"):
        check_vocabulary(tokenizer, 7, tmp_path, "config.json vocab_size")
    check_vocabulary(tokenizer, 8, tmp_path, "config.json vocab_size")
