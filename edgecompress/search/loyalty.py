"""Agreement with the original model for a student candidate (issue 13, item 4).

A student's own export judges agreement against the student's float model; the search ranks loyalty to the
model the user gave. So for a student, the shipped .onnx runs in onnxruntime on every text of --data (each padded
to the profile's longest input, as the export's verification also runs it) and its predicted labels are compared
with the original model's in torch eager, the reference every other candidate's agreement is measured against.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgecompress.report.document import MEASURED


class OriginalPredictions:
    """The original model's predicted labels on --data, computed once per search."""

    def __init__(self, model: Path, data: Path, seq_len: int) -> None:
        self._model, self._data, self._seq_len = model, data, seq_len
        self._labels: np.ndarray | None = None
        self._texts: list[str] | None = None

    def labels(self) -> np.ndarray:
        if self._labels is None:
            from edgecompress.intake.model import load_bundle
            from edgecompress.verify.evaluate import reference_outputs

            bundle = load_bundle(self._model)
            self._labels = reference_outputs(bundle, self._feeds(bundle.tokenizer, bundle.input_names)).argmax(-1)
        return self._labels

    def texts(self) -> list[str]:
        from edgecompress.intake.data import load_dataset

        if self._texts is None:
            self._texts = load_dataset(self._data, require_labels=False).texts
        return self._texts

    def _feeds(self, tokenizer, input_names) -> dict[str, np.ndarray]:
        from edgecompress.intake.data import tokenize

        return tokenize(tokenizer, self.texts(), seq_len=self._seq_len, input_names=input_names)

    def agreement(self, student: Path, export_folder: Path) -> dict[str, Any] | None:
        """{value, how, method} for the student's shipped .onnx; None when the export has no .onnx file."""
        import onnxruntime as ort

        from edgecompress.intake.model import load_bundle

        onnx_file = export_folder / "model.onnx"
        if not onnx_file.is_file():
            return None
        bundle = load_bundle(student)
        feeds = self._feeds(bundle.tokenizer, bundle.input_names)
        session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
        names = [i.name for i in session.get_inputs()]
        predicted = np.array(
            [
                session.run(None, {n: feeds[n][i : i + 1] for n in names})[0].argmax(-1)[0]
                for i in range(len(self.texts()))
            ]
        )
        return {
            "value": float(np.mean(predicted == self.labels())),
            "how": MEASURED,
            "method": f"same predicted label as the original model ({self._model.name}, torch eager) on the "
            f"{len(predicted)} texts of --data: the student's model.onnx in onnxruntime on this host, each text "
            f"padded to {self._seq_len} tokens",
        }
