"""The `integer_only` compress pass: a float classifier -> I-BERT-style integer-only module.

Before -> After:
    bundle.module = ReferenceModule(<Family>ForSequenceClassification)   (float32; BERT, DistilBERT, RoBERTa,
                    XLM-RoBERTa: the families whose Architecture opts in, the others are refused before any work)
 -> bundle.module = IntegerBert: int8/int32/int64 arithmetic from the token ids to the logits, lowered by
    its own `to_onnx` (MatMulInteger and integer elementwise ops; float only at the final dequantize)

Activation ranges are calibrated on the calibration texts (`--calibration`, else `--data`). With
`--train-data` and `qat_epochs` > 0 the float weights are first fine-tuned with fake quantization
(`qat.py`), distilled from the float model, then calibrated and converted.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from dataclasses import dataclass

import numpy as np
import torch

from edgecompress.compress.integer_only.calibrate import calibrate
from edgecompress.compress.integer_only.model import check_convertible, integer_bert
from edgecompress.errors import InternalError, UserError
from edgecompress.intake.model import CLASSIFICATION
from edgecompress.passes import Pass, PassContext, PassResult, PassSkipped, register_pass

log = logging.getLogger(__name__)


@register_pass
@dataclass(frozen=True)
class IntegerOnly(Pass):
    name = "integer_only"
    stage = "compress"
    in_place = False  # converts a copy: the pipeline keeps the float input as the accuracy reference
    # It takes a float classifier and returns an integer module that no other torch pass can take.
    runs_after = ("trim_vocab", "drop_layers", "prune_heads", "prune_ffn", "prune_schedule", "qat")
    calibration_rows: int = 256  # calibration texts the activation ranges are taken on
    percentile: float = 100.0  # of |x| for the int8 Q, K, V ranges (100: the max); other ranges take the max
    qat_epochs: float = 0.0  # quantization-aware fine-tuning on --train-data; 0: calibrate only
    lr: float = 2e-5
    batch_size: int = 32
    temperature: float = 2.0
    work_dir: str = ""  # where QAT checkpoints go, so an interrupted run resumes; "" = no checkpoints
    seed: int = 0

    def requires(self, bundle, ctx: PassContext) -> None:
        self._check_options()
        if bundle.module is None:
            raise PassSkipped("the model came in as ONNX: there is no torch module to convert")
        if bundle.kind != CLASSIFICATION or getattr(bundle.module, "pooled", False):
            raise UserError(
                f"integer-only lowering cannot handle a {bundle.kind} model (mean-pooled encoder)",
                where=str(bundle.source),
                expected="a sequence classifier checkpoint (<Family>ForSequenceClassification)",
            )
        check_convertible(bundle.module.hf_model, str(bundle.source))
        if ctx.calibration is None:
            raise UserError(
                f"pass '{self.name}' calibrates activation ranges on texts, but none were given",
                expected="--calibration or --train-data (a CSV, TSV or JSONL file with a text column)",
            )
        if self.qat_epochs > 0 and ctx.train_data is None:
            raise UserError(
                f"pass '{self.name}' has qat_epochs {self.qat_epochs} but no training texts",
                expected="--train-data (a labelled CSV, TSV or JSONL file)",
                hint="or set qat_epochs = 0 to calibrate only",
            )

    def _check_options(self) -> None:
        for option in ("calibration_rows", "lr", "batch_size", "temperature"):
            if getattr(self, option) <= 0:
                raise UserError(
                    f"option '{option}' of pass '{self.name}' must be positive, got {getattr(self, option)!r}"
                )
        if not 50.0 <= self.percentile <= 100.0:
            raise UserError(f"option 'percentile' of pass '{self.name}' must be in [50, 100], got {self.percentile!r}")
        if self.qat_epochs < 0:
            raise UserError(f"option 'qat_epochs' of pass '{self.name}' must be 0 or more, got {self.qat_epochs!r}")

    def run(self, bundle, ctx: PassContext) -> PassResult:
        float_model = bundle.module.hf_model
        calibration = ctx.calibration
        if calibration is None:  # requires() refuses a context without calibration texts
            raise InternalError("integer_only ran without calibration texts")
        rows = min(self.calibration_rows, len(calibration["input_ids"]))
        model = copy.deepcopy(float_model)
        ranges = calibrate(model, calibration, rows=rows, percentile=self.percentile)
        notes, stats = [], {"calibration_rows": rows, "percentile": self.percentile}
        if self.qat_epochs > 0:
            from edgecompress.compress.integer_only.qat import quantization_aware_training

            trained = quantization_aware_training(model, float_model, bundle, ctx, ranges, self)
            stats.update(trained)
            notes.append(
                f"QAT: {self.qat_epochs} epochs ({trained['steps']} steps, {trained['seconds']} s), "
                f"loss {trained.get('loss_first')} -> {trained.get('loss_last')}"
            )
            ranges = calibrate(model, calibration, rows=rows, percentile=self.percentile)
        integer = integer_bert(model, ranges, where=str(bundle.source))
        agreement = _agreement(integer, bundle.module, calibration, rows, bundle.input_names)
        stats.update(
            {
                "layers": integer.layer_count,
                "weight_bits": 8,
                "activation_bits": 8,
                "qat_epochs": self.qat_epochs,
                "calibration_agreement": round(agreement, 4),
                "logit_lsb": integer.parity_atol,
            }
        )
        notes.insert(
            0,
            f"integer-only (I-BERT): {integer.layer_count} layers, int8 weights and matmul inputs, "
            f"ranges from {rows} calibration texts (percentile {self.percentile})",
        )
        notes.append(f"prediction agreement with the float model on the calibration texts: {agreement:.1%}")
        log.info(
            "integer_only: %d layers converted, agreement with float %.1f%% on %d texts",
            integer.layer_count,
            100 * agreement,
            rows,
        )
        new = dataclasses.replace(bundle, module=integer, integer_only=True, parity_atol=integer.parity_atol)
        return PassResult(new, notes, stats, lossy=True)

    def ensures(self, before, result: PassResult, ctx: PassContext) -> None:
        module = result.model.module
        if not getattr(module, "integer_only", False) or not module.parity_atol > 0:
            raise InternalError("integer_only did not produce an integer-only module with a parity tolerance")


def _agreement(integer, reference, feeds: dict, rows: int, names: tuple[str, ...], batch_size: int = 32) -> float:
    """Share of the first `rows` texts where the integer and float models predict the same label (both take the
    family's inputs, `names`)."""
    lengths = feeds["attention_mask"][:rows].sum(axis=1)
    order = np.argsort(lengths, kind="stable")
    same = 0
    with torch.no_grad():
        for start in range(0, rows, batch_size):
            picked = order[start : start + batch_size]
            width = max(int(lengths[picked].max()), 1)  # trailing padding changes neither model
            args = [torch.from_numpy(feeds[n][picked, :width]) for n in names]
            same += int((integer(*args).argmax(-1) == reference(*args).argmax(-1)).sum())
    return same / rows
