"""Weight Squeezing (`distill --student squeezed`): the maps compute every student tensor, exactly where they are
identities; training moves only the maps; what ships is a plain narrow BERT that exports; unfit teachers are
refused before any work."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from edgecompress.cli import main
from edgecompress.distill import trainer
from edgecompress.distill.run import DistillRequest, distill, plan_distillation, prepare, work_dir
from edgecompress.distill.squeeze import check_squeezable, initial_maps, squeezed_config, squeezed_student
from edgecompress.errors import UserError
from edgecompress.intake.model import load_bundle
from edgecompress.pipeline import ExportRequest, run_export

from conftest import SENTENCES, TINY, user_error

TEXTS = [text for text, _ in SENTENCES]


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # module scope: one thread for the whole file


@pytest.fixture(scope="module")
def teacher_bundle(fitted_teacher):
    return load_bundle(fitted_teacher)


def squeeze_request(teacher: Path, data: Path, out: Path, *, epochs: int = 8, **extra) -> DistillRequest:
    return DistillRequest(
        teacher=teacher,
        student="squeezed",
        train_data=data,
        out_dir=out,
        augment=3,
        seq_len=16,
        training={"epochs": epochs, "batch_size": 8, "lr": 5e-3},
        **extra,
    )


@pytest.fixture(scope="module")
def squeezed(fitted_teacher, tiny_data, tmp_path_factory) -> Path:
    return distill(squeeze_request(fitted_teacher, tiny_data, tmp_path_factory.mktemp("squeezed") / "student"))


def logits(module, bundle, texts=TEXTS):
    batch = bundle.tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        return module(**batch).logits


def test_identity_maps_give_back_the_teacher_exactly(teacher_bundle):
    """A student of the teacher's own shape whose maps are identities computes the teacher's every tensor: the
    rules cover the whole model, each with the right maps on the right sides."""
    config = squeezed_config(
        teacher_bundle.config,
        {key: TINY[key] for key in ("hidden_size", "num_attention_heads", "intermediate_size")}
        | {"num_hidden_layers": 2, "teacher_layers": [1, 2]},
        tokenizer=teacher_bundle.tokenizer,
        where="test",
    )
    teacher = teacher_bundle.module.hf_model.eval()
    student = squeezed_student(config, teacher).eval()
    with torch.no_grad():
        for value in student.maps.values():
            value.copy_(torch.eye(value.shape[0]))
    expected = logits(teacher, teacher_bundle)
    torch.testing.assert_close(logits(student, teacher_bundle), expected, rtol=0, atol=1e-5)
    plain = student._skeleton[0].__class__(student.config).eval()
    plain.load_state_dict(student.shipped_state())
    torch.testing.assert_close(logits(plain, teacher_bundle), expected, rtol=0, atol=1e-5)


def test_default_student_is_half_as_wide_and_its_maps_start_from_the_teacher(teacher_bundle):
    teacher = teacher_bundle.module.hf_model
    config = squeezed_config(teacher_bundle.config, {}, tokenizer=teacher_bundle.tokenizer, where="test")
    assert (config["hidden_size"], config["num_attention_heads"], config["intermediate_size"]) == (16, 1, 32)
    assert config["num_hidden_layers"] == 1 and config["teacher_layers"] == [2]
    maps = initial_maps(config, teacher)
    hidden = maps["hidden.0"]
    torch.testing.assert_close(hidden @ hidden.T, torch.eye(16), rtol=0, atol=1e-5)  # orthonormal directions
    assert torch.equal(maps["inner.0"], torch.eye(32)[:16])  # the first head, whole
    ffn_in, ffn_out = teacher.bert.encoder.layer[1].intermediate.dense, teacher.bert.encoder.layer[1].output.dense
    strength = ffn_in.weight.norm(dim=1) * ffn_out.weight.norm(dim=0)
    chosen = maps["ffn.0"].argmax(dim=1)
    assert set(chosen.tolist()) == set(strength.argsort(descending=True)[:32].tolist())


def test_training_moves_only_the_maps_and_ships_a_plain_bert(fitted_teacher, tiny_data, squeezed, tmp_path):
    from safetensors.torch import load_file

    config = json.loads((squeezed / "config.json").read_text())
    assert config["architectures"] == ["BertForSequenceClassification"] and config["hidden_size"] == 16
    shipped = load_file(squeezed / "model.safetensors")
    assert not any("maps" in name for name in shipped)  # the maps are dropped
    out = tmp_path / "start"
    prepare(plan_distillation(squeeze_request(fitted_teacher, tiny_data, out)), work_dir(out))
    initial = torch.load(work_dir(out) / trainer.INIT, weights_only=True)["state"]
    # what trains: the maps alone (a BERT teacher has a counterpart for every student tensor), no teacher tensor
    assert {name.split(".")[0] for name in initial} == {"maps"}
    record = json.loads((squeezed / "training.json").read_text())
    assert record["kind"] == "squeezed" and record["epoch_losses"][-1] < record["epoch_losses"][0]


def test_squeezed_student_imitates_the_teacher(teacher_bundle, squeezed):
    """Not exact (a quarter of the teacher's layer weights): a floor on agreement over the training texts."""
    wanted = logits(teacher_bundle.module.hf_model.eval(), teacher_bundle).argmax(-1)
    student = load_bundle(squeezed)
    got = logits(student.module.hf_model.eval(), teacher_bundle).argmax(-1)
    assert (got == wanted).float().mean() >= 0.9


def test_squeezed_student_exports_with_verified_parity(squeezed, tiny_device, tiny_data, tmp_path):
    result = run_export(ExportRequest(squeezed, str(tiny_device), tmp_path, data=tiny_data, measure=False))
    assert all(artifact.parity["passed"] for artifact in result.report.artifacts)
    fuse = next(p for p in result.report.passes if p["name"] == "fuse_transformer")
    assert fuse["fired"]  # a plain BERT: ONNX Runtime's fusions apply as to any other


@pytest.mark.parametrize("family", ["mobilebert", "albert"])
def test_a_teacher_with_narrow_embeddings_is_refused_before_any_work(family, tiny_data, tmp_path):
    from family_models_b import build_family_checkpoint

    teacher = build_family_checkpoint(tmp_path / family, family)
    out = tmp_path / "student"
    args = ["distill", str(teacher), "--student", "squeezed", "--train-data", str(tiny_data), "-o", str(out)]
    result = CliRunner().invoke(main, args)
    line = user_error(result, out)
    assert line.startswith(f"error: {teacher}: Weight Squeezing needs embeddings as wide as the layers"), line
    assert not work_dir(out).exists()


def test_a_teacher_whose_layers_are_not_bert_shaped_is_refused(fitted_teacher):
    """As a bottleneck layer would be (MobileBERT's are, but its narrow embeddings are refused first)."""
    teacher = load_bundle(fitted_teacher).module.hf_model
    teacher.bert.encoder.layer[0].intermediate.dense = torch.nn.Linear(32, 48)
    with pytest.raises(UserError, match=r"BERT-shaped layers, .* 'intermediate.dense' has shape \(48, 32\)"):
        check_squeezable(teacher, where="teacher")


def test_a_squeezed_student_has_no_init_setting(teacher_bundle):
    with pytest.raises(UserError, match="a squeezed student has no 'init' setting"):
        squeezed_config(teacher_bundle.config, {"init": "random"}, tokenizer=teacher_bundle.tokenizer, where="x")
