"""Student checkpoint folders: written at the end of distillation, read back by intake for `export`.

A BiLSTM or CNN student folder holds config.json (`architectures`, `model_type` "edgecompress-student",
the hyper-parameters, `id2label`), model.safetensors, the teacher's tokenizer files unchanged, and
training.json. A small-transformer student is a plain BertForSequenceClassification folder that intake
takes as it is. Loading is as strict as for BERT checkpoints: every tensor present with its shape, none
left over, because a silently re-initialised tensor would ship an untrained model.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def write_student(
    folder: Path, kind: str, config: dict[str, Any], state: dict, teacher, record: dict[str, Any]
) -> None:
    """Write the student checkpoint into the (new, empty) `folder`."""
    from safetensors.torch import save_file

    from edgecompress.distill.trainer import TRANSFORMERS

    folder.mkdir(parents=True)
    if kind in TRANSFORMERS:  # BertConfig's own config.json; save_pretrained would draw a progress bar
        from edgecompress.distill.small_bert import new_transformer_student

        new_transformer_student(config).config.to_json_file(str(folder / "config.json"))
    else:
        (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    save_file(
        {name: tensor.contiguous() for name, tensor in state.items()},
        str(folder / "model.safetensors"),
        metadata={"format": "pt"},
    )
    for name in teacher.tokenizer_settings.files:
        shutil.copyfile(teacher.tokenizer_dir / name, folder / name)
    (folder / "training.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


def load_student(folder: Path, config: dict[str, Any]):
    """Intake for a BiLSTM or CNN student folder -> a ModelBundle taking (input_ids, attention_mask)."""
    import transformers  # noqa: F401  (imported before the capture below, so its log handler is captured too)

    from edgecompress.distill.students import build_student, check_config, check_fits_tokenizer
    from edgecompress.intake.model import ModelBundle, label_names, load_tokenizer, read_weights
    from edgecompress.logs import captured_library_output
    from edgecompress.tasks.sequence_classification import SingleLabelClassification

    where = str(folder / "config.json")
    check_config(config, where)
    with captured_library_output() as library_lines:  # AutoTokenizer warns about the unknown model_type
        tokenizer, settings = load_tokenizer(folder, config, folder)
    for line in library_lines:
        log.debug("loading the tokenizer: %s", line)
    check_fits_tokenizer(config, tokenizer, where)
    module = build_student(config)
    state = read_weights(folder)
    _check_weights(state, module.state_dict(), folder)
    module.load_state_dict(state)
    module.eval()
    return ModelBundle(
        source=folder,
        task=SingleLabelClassification(label_names(config)),  # students are distilled from single-label classifiers
        tokenizer=tokenizer,
        tokenizer_dir=folder,
        tokenizer_settings=settings,
        module=module,
        config=config,
        input_names=("input_ids", "attention_mask"),
        output_name="logits",
    )


def _check_weights(state: dict, expected: dict, folder: Path) -> None:
    from edgecompress.errors import UserError

    hint = "is config.json from the same checkpoint as the weights?"
    for name, tensor in expected.items():
        if name not in state:
            raise UserError(
                f"weights do not match the config: tensor '{name}' is missing", where=str(folder), hint=hint
            )
        if tuple(state[name].shape) != tuple(tensor.shape):
            raise UserError(
                f"weights do not match the config: '{name}' has shape {tuple(state[name].shape)}",
                where=str(folder),
                expected=f"{tuple(tensor.shape)} from config.json",
            )
    extra = sorted(set(state) - set(expected))
    if extra:
        raise UserError(
            f"weights do not match the config: unexpected tensor '{extra[0]}'", where=str(folder), hint=hint
        )
