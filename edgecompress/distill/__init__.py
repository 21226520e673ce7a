"""Knowledge distillation: train a small student to imitate a fine-tuned BERT-class teacher.

The trip: labelled texts -> augmented transfer set labelled by the teacher (`augment`) -> student
initialised from the teacher (`students`, `small_bert`, `embeddings`) -> trained on logit, hidden-state
and attention losses (`losses`) by a DistributedDataParallel trainer (`trainer`) -> a student checkpoint
folder that `edgecompress export` takes like any other model (`checkpoint`). `run.distill` ties it together.

The pass registry imports every module under `edgecompress.compress`, so no module here imports torch at
import time: torch costs seconds to import and an ONNX-only export never needs it.
"""
