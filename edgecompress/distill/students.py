"""Small student classifiers that read the teacher's token ids: a BiLSTM and a multi-width CNN.

BiLSTM (Tang et al. 2019, "Distilling Task-Specific Knowledge from BERT into Simple Neural Networks"):
embedding -> one bidirectional LSTM layer -> masked max over time of its outputs, or its two final states
concatenated -> ReLU MLP -> logits. CNN (Kim 2014): embedding -> 1-D convolutions of several widths ->
ReLU -> masked max over time -> ReLU MLP -> logits.

Both take `(input_ids, attention_mask)` int64 with the teacher's token ids, so the app keeps the teacher's
tokenizer. A `token_map` buffer sends those ids to rows of a much smaller embedding table (the tokens of
the training corpus, see `embeddings.py`); every other id lands on [UNK]'s row. This is what lets an int8
student fit in 2 MB: the teacher's 30,522-row table would not. Padding never changes the logits, so the
reference (batches trimmed to their longest text) and the artifact (padded to seq_len) agree: the LSTM
runs on packed sequences, exported as one ONNX `LSTM` with `sequence_lens` (`ExportedLSTM`); the CNN
zeroes padded embeddings and keeps only windows that start on a real token.
"""

from __future__ import annotations

import functools
from typing import Any

from edgecompress.errors import UserError

MODEL_TYPE = "edgecompress-student"
ARCHITECTURES = {"bilstm": "EdgecompressBiLSTMClassifier", "cnn": "EdgecompressCNNClassifier"}
KINDS = {architecture: kind for kind, architecture in ARCHITECTURES.items()}
# Hyper-parameters a user may set per student, with their defaults. Sizes are chosen so that the int8
# artifact of a ~20,000-token corpus vocabulary stays under 2 MB (embedding rows x embedding_dim bytes).
HYPERPARAMETERS: dict[str, dict[str, Any]] = {
    "bilstm": {
        "embedding_dim": 64,
        "lstm_hidden": 128,
        "pooling": "max",
        "mlp_hidden": 128,
        "dropout": 0.1,
        "max_vocab": 20000,
        "embedding_init": "contextual",
    },
    # Measured on Rotten Tomatoes validation (4 augmented copies): widths 2-5 x 128 filters with dropout 0.3
    # 79.3%; widths 1-4 x 64 filters with dropout 0.1 78.2%; embedding_dim 96 did not help (78.8%). From
    # there (validation / test, teacher 84.01% on test): 6 epochs 79.45 / 80.96%, KL at temperature 2
    # 79.29 / 80.96%, widths 1-5 x 256 filters 78.59 / 79.47%, 8 augmented copies (KL, 6 epochs) 78.75 /
    # 80.56%; contextual embedding init (embeddings.py) 80.47 / 81.43%, the one change that moved both.
    "cnn": {
        "embedding_dim": 64,
        "kernel_sizes": [2, 3, 4, 5],
        "num_filters": 128,
        "mlp_hidden": 128,
        "dropout": 0.3,
        "max_vocab": 20000,
        "embedding_init": "contextual",
    },
}
POOLINGS = ("max", "final")
EMBEDDING_INITS = ("contextual", "word")  # see embeddings.py
# Fields every student config.json carries besides its hyper-parameters.
_SIZES = ("vocab_size", "embedding_rows", "num_labels")


def student_config(
    kind: str, overrides: dict[str, Any], *, tokenizer, labels: list[str], max_positions: int, where: str
) -> dict[str, Any]:
    """The config.json of a new student: defaults, then the user's overrides, checked against the tokenizer.

    `embedding_rows` is the full vocabulary until the corpus is known (`embeddings.kept_tokens`).
    """
    known = {*HYPERPARAMETERS[kind], "vocab_size"}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise UserError(
            f"unknown {kind} student setting '{unknown[0]}'", where=where, hint=f"Known: {', '.join(sorted(known))}"
        )
    config = {
        "architectures": [ARCHITECTURES[kind]],
        "model_type": MODEL_TYPE,
        **HYPERPARAMETERS[kind],
        "vocab_size": len(tokenizer),
        **overrides,
        "num_labels": len(labels),
        "id2label": {str(i): name for i, name in enumerate(labels)},
        "label2id": {name: i for i, name in enumerate(labels)},
        "pad_token_id": int(tokenizer.pad_token_id or 0),
        "max_position_embeddings": max_positions,
    }
    config["embedding_rows"] = config["vocab_size"]
    check_config(config, where)
    check_fits_tokenizer(config, tokenizer, where)
    return config


def check_config(config: dict[str, Any], where: str) -> str:
    """Validate a student config (new, or read from a checkpoint); returns the student kind."""
    kind = KINDS.get((config.get("architectures") or [None])[0])
    if kind is None or config.get("model_type") != MODEL_TYPE:
        raise UserError(
            f"not an edgecompress student: architectures {config.get('architectures')!r}, "
            f"model_type {config.get('model_type')!r}",
            where=where,
            expected=f"one of {', '.join(KINDS)} with model_type '{MODEL_TYPE}'",
        )
    for key in (
        *_SIZES,
        "embedding_dim",
        "mlp_hidden",
        "max_vocab",
        *(("lstm_hidden",) if kind == "bilstm" else ("num_filters",)),
    ):
        _positive_int(config, key, where)
    if config["embedding_rows"] > config["vocab_size"]:
        raise UserError(
            f"embedding_rows {config['embedding_rows']} exceeds vocab_size {config['vocab_size']}", where=where
        )
    if not isinstance(config.get("dropout"), (int, float)) or not 0 <= config["dropout"] < 1:
        raise UserError(f"'dropout' must be in [0, 1), got {config.get('dropout')!r}", where=where)
    if config.get("embedding_init", "word") not in EMBEDDING_INITS:
        raise UserError(
            f"'embedding_init' must be one of {', '.join(EMBEDDING_INITS)}, got {config.get('embedding_init')!r}",
            where=where,
        )
    if kind == "bilstm" and config.get("pooling") not in POOLINGS:
        raise UserError(f"'pooling' must be one of {', '.join(POOLINGS)}, got {config.get('pooling')!r}", where=where)
    sizes = config.get("kernel_sizes")
    if kind == "cnn" and not (
        isinstance(sizes, list)
        and sizes
        and all(isinstance(k, int) and not isinstance(k, bool) and k > 0 for k in sizes)
    ):
        raise UserError(f"'kernel_sizes' must be a non-empty list of positive integers, got {sizes!r}", where=where)
    return kind


def check_fits_tokenizer(config: dict[str, Any], tokenizer, where: str) -> None:
    """A student reads the tokenizer's ids directly: its id space must be exactly the tokenizer's."""
    if config["vocab_size"] != len(tokenizer):
        raise UserError(
            f"student vocab_size {config['vocab_size']} does not match the tokenizer's {len(tokenizer)} tokens",
            where=where,
            hint="the student reads the teacher tokenizer's ids; drop vocab_size from the config",
        )


def _positive_int(config: dict[str, Any], key: str, where: str) -> None:
    value = config.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise UserError(f"'{key}' must be a positive integer, got {value!r}", where=where)


def build_student(config: dict[str, Any]):
    """A freshly initialised student module for a checked config."""
    return _classes()[config["architectures"][0]](config)


@functools.cache
def _classes() -> dict[str, type]:
    """The torch modules, defined on first use so that importing this file does not import torch."""
    import torch
    from torch import nn
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    class Student(nn.Module):
        """Shared parts: teacher ids -> student embedding rows, and the MLP head."""

        def __init__(self, config: dict[str, Any], features: int):
            super().__init__()
            self.register_buffer("token_map", torch.arange(config["vocab_size"], dtype=torch.int32))
            self.embedding = nn.Embedding(config["embedding_rows"], config["embedding_dim"])
            dropout, hidden = config["dropout"], config["mlp_hidden"]
            self.head = nn.Sequential(
                nn.Dropout(dropout),
                nn.Linear(features, hidden),
                nn.ReLU(),
                nn.Dropout(dropout),
                nn.Linear(hidden, config["num_labels"]),
            )

        def embed(self, input_ids):
            return self.embedding(self.token_map[input_ids])

    class EdgecompressBiLSTMClassifier(Student):
        def __init__(self, config: dict[str, Any]):
            super().__init__(config, features=2 * config["lstm_hidden"])
            self.pooling = config["pooling"]
            self.lstm = nn.LSTM(config["embedding_dim"], config["lstm_hidden"], batch_first=True, bidirectional=True)

        def forward(self, input_ids, attention_mask):
            lengths = attention_mask.sum(dim=1).clamp(min=1)
            embedded = self.embed(input_ids)
            if torch.onnx.is_in_onnx_export():
                outputs, final = ExportedLSTM.apply(
                    embedded, lengths, *onnx_lstm_weights(self.lstm), (self.lstm.input_size, self.lstm.hidden_size)
                )
            else:
                outputs, final = run_packed(self.lstm, embedded, lengths)
            if self.pooling == "final":
                return self.head(torch.cat([final[0], final[1]], dim=1))
            real = attention_mask[:, :, None].bool()
            # LSTM outputs lie in (-1, 1), so -1 on padded steps can never win the max.
            return self.head(outputs.masked_fill(~real, -1.0).amax(dim=1))

    def run_packed(lstm, embedded, lengths):
        """(outputs [batch, seq, 2H], zeros after each text's end; final states [2, batch, H]): padding is
        skipped, not computed, so the logits do not depend on it."""
        packed = pack_padded_sequence(embedded, lengths.cpu(), batch_first=True, enforce_sorted=False)
        outputs, (final, _) = lstm(packed)
        outputs, _ = pad_packed_sequence(outputs, batch_first=True, total_length=embedded.shape[1])
        return outputs, final

    def onnx_lstm_weights(lstm):
        """torch's per-direction weights (gates i, f, g, o) stacked as ONNX LSTM's W, R, B (gates i, o, f, c)."""

        def gates(tensor):
            i, f, g, o = tensor.chunk(4, dim=0)
            return torch.cat([i, o, f, g], dim=0)

        suffixes = ("_l0", "_l0_reverse")
        weights = torch.stack([gates(getattr(lstm, f"weight_ih{s}")) for s in suffixes])
        recurrent = torch.stack([gates(getattr(lstm, f"weight_hh{s}")) for s in suffixes])
        bias = torch.stack(
            [torch.cat([gates(getattr(lstm, f"bias_ih{s}")), gates(getattr(lstm, f"bias_hh{s}"))]) for s in suffixes]
        )
        return weights, recurrent, bias

    class ExportedLSTM(torch.autograd.Function):
        """Exports as one ONNX `LSTM` with per-text `sequence_lens`, what `run_packed` computes.

        Tracing `pack_padded_sequence` goes through prim::PackPadded, which the TorchScript exporter only
        half supports: it warns about missing shape inference, and a graph reading the final states fails
        to export. This symbolic writes the ONNX op directly; the numbers are those of `run_packed`.
        """

        @staticmethod
        def forward(ctx, embedded, lengths, weights, recurrent, bias, sizes):
            # The module cannot be an argument here (its parameters are not inputs of the traced graph), so
            # the LSTM is rebuilt from the exported tensors, back in torch's gate order.
            lstm = nn.LSTM(*sizes, batch_first=True, bidirectional=True)
            with torch.no_grad():
                for index, suffix in enumerate(("_l0", "_l0_reverse")):
                    getattr(lstm, f"weight_ih{suffix}").copy_(_torch_gates(weights[index]))
                    getattr(lstm, f"weight_hh{suffix}").copy_(_torch_gates(recurrent[index]))
                    getattr(lstm, f"bias_ih{suffix}").copy_(_torch_gates(bias[index, : 4 * sizes[1]]))
                    getattr(lstm, f"bias_hh{suffix}").copy_(_torch_gates(bias[index, 4 * sizes[1] :]))
                return run_packed(lstm, embedded, lengths)

        @staticmethod
        def symbolic(g, embedded, lengths, weights, recurrent, bias, sizes):
            steps = g.op("Transpose", embedded, perm_i=[1, 0, 2])  # ONNX LSTM's default layout: time first
            lengths = g.op("Cast", lengths, to_i=6)  # int32, as ONNX requires
            outputs, final, _ = g.op(
                "LSTM",
                steps,
                weights,
                recurrent,
                bias,
                lengths,
                hidden_size_i=sizes[1],
                direction_s="bidirectional",
                outputs=3,
            )
            batch_first = g.op("Transpose", outputs, perm_i=[2, 0, 1, 3])  # [batch, seq, 2, H]
            shape = g.op("Constant", value_t=torch.tensor([0, 0, -1], dtype=torch.int64))
            return g.op("Reshape", batch_first, shape), final

    def _torch_gates(tensor):
        i, o, f, c = tensor.chunk(4, dim=0)
        return torch.cat([i, f, c, o], dim=0)

    class EdgecompressCNNClassifier(Student):
        def __init__(self, config: dict[str, Any]):
            super().__init__(config, features=len(config["kernel_sizes"]) * config["num_filters"])
            self.convs = nn.ModuleList(
                nn.Conv1d(config["embedding_dim"], config["num_filters"], width, padding=width - 1)
                for width in config["kernel_sizes"]
            )

        def forward(self, input_ids, attention_mask):
            real = attention_mask[:, None, :].to(torch.float32)
            tokens = self.embed(input_ids).transpose(1, 2) * real  # [batch, dim, seq], padding zeroed
            # With w-1 zeros padded on both sides there are seq+w-1 outputs; output w-1+t is the window of
            # tokens t..t+w-1, so dropping the first w-1 leaves one window per token (a constant slice).
            # After ReLU every value is >= 0: multiplying windows that start on padding by 0 removes them
            # from the max.
            pooled = [(torch.relu(conv(tokens)[:, :, conv.padding[0] :]) * real).amax(dim=2) for conv in self.convs]
            return self.head(torch.cat(pooled, dim=1))

    return {cls.__name__: cls for cls in (EdgecompressBiLSTMClassifier, EdgecompressCNNClassifier)}
