"""Progressive token elimination (PoWER-BERT, Goyal et al. 2020): in each encoder layer, between its attention
and its feed-forward, keep only the k_i tokens that received the most attention in that layer; the feed-forward
and every later layer run on fewer tokens.

Before -> After (6 layers, retention [64, 32, 32, 16, 16] at seq_len 128), layer i:
    FFN(Attention(h [B, n_i, H]))  ->  FFN(GatherElements(Attention(h), TopK(significance, k_i)))  [B, k_i, H]
    n_0 = 128, n_(i+1) = k_i, and the last layer's FFN runs on [CLS] alone (k = 1, a slice): static shapes.

Significance of token j = the attention probability it receives in layer i, summed over heads and over the
real (non-padding) query rows. Padding always ranks below every real token and [CLS] above all, so [CLS]
stays first (the classifier head reads it) and padding goes before any real token. Because the counts are
absolute, a text of n real tokens gives the same output whatever it is padded to: a layer whose k_i >= n keeps
every real token; below that it keeps the same top-k_i real ones. A k_i at least the layer's input length
leaves that layer whole. The head reads [CLS] alone, so the last layer's [CLS]-only feed-forward is exact and
retention 1.0 gives the original model's outputs (up to float rounding: the FFN multiplies one row, not n).

Retention is one value per layer but the last: floats are fractions of seq_len in (0, 1], ints are token
counts from 1 to seq_len; non-increasing. `"search"` picks the counts on `search_texts` texts of `--train-data`
(labels unused, before any training): greedy, each round halves the count at the one layer whose halving keeps
the most predictions of the original model, while at least `agreement` of them are kept. Then the original
model teaches the eliminating one (`_recovery.recover`) on logits only: the student's layers keep fewer tokens
than the teacher's, so their outputs do not pair.

Only classifiers that read the first token (sequence classification, multi-label, regression) qualify: a
token-level or pooled output needs every token.

ONNX Runtime fuses each layer's attention into one `Attention` op, which does not output its probabilities;
its fuser does not check whether anything else reads them (measured, onnxruntime 1.31: reading the eager
attention's probabilities left a graph that had lost them). So the ranking recomputes them beside the attention
from the layer's Q and K weights (`Architecture.attention_probabilities`: two extra H x H products and the
scores per eliminating layer), and the kept tokens' mask is written in a form the fuser takes: every layer's
attention still fuses, and the export's fusion check holds it to that.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

from edgecompress.architectures import architecture_for, architecture_of
from edgecompress.compress._pruning import cloned, encoder_layers
from edgecompress.compress._recovery import RecoveringPass
from edgecompress.compress._taskdata import TaskData, task_data, training_seq_len
from edgecompress.errors import InternalError, UserError
from edgecompress.passes import PassContext, PassResult, PassSkipped, register_pass

log = logging.getLogger(__name__)

# Above any significance (at most heads x queries): [CLS] is always kept, and kept first.
_FIRST = 1e9


@register_pass
@dataclass(frozen=True)
class EliminateTokens(RecoveringPass):
    name = "eliminate_tokens"
    stage = "compress"
    in_place = False  # works on a copy (`cloned`): the pipeline keeps the input as the accuracy reference
    changed, untrained = "token-eliminating", "the elimination without training"
    # The other torch passes find layers, heads and FFNs by the family's attribute paths, which the wrapped
    # layers hide: they must see the plain layers first.
    runs_after = ("prune_heads", "prune_ffn", "prune_schedule", "drop_layers", "low_rank", "share_layers", "trim_vocab")
    runs_before = ("qat", "integer_only")
    # Tokens kept after each layer but the last: fractions of seq_len (floats) or counts (ints); or "search".
    retention: Any = None
    agreement: float = 0.99  # "search": the share of the original model's predictions to keep
    search_texts: int = 256  # "search": --train-data texts it judges on (a seeded sample)
    hidden_weight: float = 0.0  # the layer-output term cannot apply: the layers keep fewer tokens than the teacher's

    def requires(self, bundle, ctx: PassContext) -> None:
        self.check_recovery(ctx)
        if self.hidden_weight != 0:
            raise UserError(
                f"option 'hidden_weight' of pass '{self.name}' must be 0, got {self.hidden_weight!r}",
                hint="the eliminating layers keep fewer tokens than the original's, so layer outputs do not pair",
            )
        if bundle.module is None:
            raise PassSkipped("the model came in as ONNX: there is no torch module to eliminate tokens in")
        architecture = architecture_of(bundle.module)
        why = architecture.refuse(self.name)
        if why:
            raise UserError(f"pass '{self.name}' does not apply to {architecture.describe()}: {why}")
        if getattr(bundle.task, "head", None) != "ForSequenceClassification":
            raise UserError(
                f"pass '{self.name}' does not apply to the task '{bundle.kind}': its output needs every token",
                expected="a sequence classifier (or multi-label, regression) that reads the first token",
            )
        if ctx.seq_len is None or ctx.dynamic_sequence:
            raise UserError(
                f"pass '{self.name}' keeps a fixed number of tokens per layer, so it needs one fixed sequence length",
                expected=f"a profile with one length, found buckets {list(ctx.buckets) or 'none'}"
                + (" and dynamic shapes" if ctx.dynamic_shapes else ""),
                hint="set runtime.buckets = [seq_len] in the device profile (a copy of it)",
            )
        layers = len(encoder_layers(bundle.module))
        if self.retention == "search":
            self._check_search(ctx)
        else:
            counts(self.retention, layers, ctx.seq_len, self.name)

    def _check_search(self, ctx: PassContext) -> None:
        if not 0.0 < self.agreement <= 1.0:
            raise UserError(f"option 'agreement' of pass '{self.name}' must be in (0, 1], got {self.agreement!r}")
        if self.search_texts < 1:
            raise UserError(f"option 'search_texts' of pass '{self.name}' must be positive, got {self.search_texts!r}")
        if ctx.train_data is None:
            raise UserError(
                f"retention = \"search\" of pass '{self.name}' judges schedules on training texts, but none were given",
                expected="--train-data (a labelled CSV, TSV or JSONL file)",
                hint="give --train-data, or give the retention per layer, e.g. retention = [0.5, 0.25, 0.25]",
            )

    def run(self, bundle, ctx: PassContext) -> PassResult:
        assert ctx.seq_len is not None  # `requires` refused a model without one
        new = cloned(bundle)
        layers = len(encoder_layers(new.module))
        notes = []
        if self.retention == "search":
            texts = task_data(bundle, ctx.train_data, seq_len=training_seq_len(bundle, ctx), limit=self.search_texts)
            keep, trail = search(new.module, texts, ctx.seq_len, self.agreement)
            notes.append(
                f"searched on {len(texts)} --train-data texts (agreement floor {self.agreement:.1%}): "
                + "; ".join(trail)
            )
        else:
            keep = counts(self.retention, layers, ctx.seq_len, self.name)
        eliminate(new.module, keep)
        record, recovery_note = self.recover(new, bundle, ctx)
        full = ctx.seq_len * layers
        # Per layer, attention (Q/K/V and output, 4 H x H) at the tokens it gets, feed-forward (8 H x H) at k_i.
        ffn = [*keep, 1]
        processed = sum(n / 3 + k * 2 / 3 for n, k in zip([ctx.seq_len, *keep], ffn))
        notes.insert(
            0, f"tokens kept before the feed-forward of layers 1-{layers}: {ffn} of {ctx.seq_len} (the last: [CLS])"
        )
        notes.append(
            f"dense work at seq_len {ctx.seq_len}: {processed / full:.0%} of the original's (token x layer, "
            "attention weighted 1/3, feed-forward 2/3; attention scores not counted)"
        )
        notes.append(recovery_note)
        stats = {
            "keep": keep,
            "seq_len": ctx.seq_len,
            "dense_work_fraction": round(processed / full, 4),
            "training_seconds": record["seconds"],
            "recovery": record,
        }
        # Every count at seq_len and no training: the original model exactly, verified at the float tolerance.
        lossy = any(k < ctx.seq_len for k in keep) or record["steps"] > 0
        return PassResult(new, notes, stats, lossy=lossy)

    def ensures(self, before, result: PassResult, ctx: PassContext) -> None:
        layers = encoder_layers(result.model.module)
        if [layer.keep for layer in layers] != [*result.stats["keep"], 1]:
            raise InternalError(f"{self.name}: the wrapped layers do not keep the recorded counts")


def counts(retention: Any, layers: int, seq_len: int, pass_name: str = "eliminate_tokens") -> list[int]:
    """Token counts per layer but the last from fractions (floats) or counts (ints); a bad value is a UserError."""
    option = f"option 'retention' of pass '{pass_name}'"
    expected = f'{layers - 1} values (one per layer but the last), or "search"'
    if not isinstance(retention, list | tuple) or len(retention) != layers - 1:
        raise UserError(f"{option} = {retention!r} has the wrong form", expected=expected)
    keep = []
    for i, value in enumerate(retention):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise UserError(f"{option}: value {i + 1} = {value!r} is not a number", expected=expected)
        if isinstance(value, float) and not 0.0 < value <= 1.0:
            raise UserError(
                f"{option}: value {i + 1} = {value!r} is out of range",
                expected="a fraction of seq_len in (0, 1] (a float), or a token count (an int)",
            )
        if isinstance(value, int) and not 1 <= value <= seq_len:
            raise UserError(
                f"{option}: value {i + 1} = {value!r} is out of range",
                expected=f"a token count from 1 to seq_len {seq_len} (an int), or a fraction (a float)",
            )
        keep.append(value if isinstance(value, int) else max(1, round(value * seq_len)))
    if any(later > earlier for earlier, later in zip(keep, keep[1:])):
        raise UserError(f"{option} = {retention!r} grows again: {keep} tokens", expected="non-increasing counts")
    return keep


class _Tokens:
    """What the wrapped layers of one forward pass hand on: the additive mask of the tokens still kept."""

    mask: torch.Tensor | None = None


class EliminatingLayer(torch.nn.Module):
    """One encoder layer that keeps, between its attention and its feed-forward, only its `keep` most-attended
    tokens (when `keep` is below its input length). `keep` 1 is [CLS] alone, which ranks first: a slice."""

    def __init__(self, layer, keep: int, first: bool, tokens: _Tokens, model_type: str):
        super().__init__()
        self.layer = layer
        self.keep = keep
        self.first = first
        self.tokens = tokens
        self.model_type = model_type  # the family (a name, not the object: modules are deep-copied)

    def forward(self, hidden_states, attention_mask=None, encoder_hidden_states=None, **kwargs):
        family = architecture_for(self.model_type)
        if self.first:
            self.tokens.mask = attention_mask
        mask = self.tokens.mask
        kwargs.pop("encoder_attention_mask", None)  # an encoder classifier has no cross-attention
        attended, _ = family.attention_block(self.layer)(hidden_states, mask, **kwargs)
        if self.keep == 1:
            attended = attended[:, :1]
            self.tokens.mask = None if mask is None else mask[:, :, :1, :1]  # [CLS] is real
        elif self.keep < attended.shape[1]:
            # Recomputed beside the attention, not read from it: ONNX Runtime fuses the attention into one op
            # that does not output its probabilities (the same numbers: the same formula on the same inputs).
            probabilities = family.attention_probabilities(self.layer, hidden_states, mask)
            real = _real_tokens(mask, attended)
            top = torch.topk(significance(probabilities, real.to(attended.dtype)), self.keep, dim=1).indices
            self.tokens.mask = _additive_mask(torch.gather(real, 1, top), attended.dtype)
            attended = torch.gather(attended, 1, top.unsqueeze(-1).expand(-1, -1, attended.shape[-1]))
        return family.feed_forward(self.layer, attended)


def _additive_mask(real: torch.Tensor, dtype) -> torch.Tensor:
    """[batch, 1, tokens, tokens]: 0 where the key is a real token, the dtype's minimum where it is padding.

    Written as transformers 4 wrote its SDPA mask (Unsqueeze, Unsqueeze, Expand, Cast, Sub, then Where on the
    inverted mask), one of the forms ONNX Runtime's attention fuser takes a mask in: BERT's older form starts
    with a Mul, and the fuser, looking for a Mul beside the scores, meets transformers 5's scaling Mul first."""
    batch, tokens = real.shape
    inverted = 1.0 - real.unsqueeze(1).unsqueeze(2).expand(batch, 1, tokens, tokens).to(dtype)
    return inverted.masked_fill(inverted.to(torch.bool), torch.finfo(dtype).min)


def _real_tokens(mask, hidden) -> torch.Tensor:
    """1 for the tokens the additive mask lets be attended, 0 for padding ([batch, tokens], int64)."""
    if mask is None:
        return torch.ones(hidden.shape[:2], dtype=torch.long, device=hidden.device)
    return (mask[:, 0, 0, :] == 0).long()


def significance(probabilities: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Attention each key receives, summed over heads and real query rows ([batch, tokens]); padding ranks last
    (-1, below any real token's >= 0), the first token ([CLS]) first."""
    received = torch.matmul(real.unsqueeze(1), probabilities.sum(dim=1)).squeeze(1)
    received = torch.where(real > 0, received, torch.full_like(received, -1.0))
    first = torch.arange(received.shape[1], device=received.device) == 0
    return torch.where(first, torch.full_like(received, _FIRST), received)


def eliminate(module, keep: list[int]) -> None:
    """Wrap the encoder layers of `module` (in place): layer i keeps `keep[i]` tokens before its feed-forward, the
    last layer [CLS] alone (the head reads nothing else, so that one is exact)."""
    architecture = architecture_of(module)
    tokens = _Tokens()
    wrapped = [
        EliminatingLayer(layer, k, i == 0, tokens, architecture.model_type)
        for i, (layer, k) in enumerate(zip(encoder_layers(module), [*keep, 1]))
    ]
    architecture.set_layers(module.hf_model, torch.nn.ModuleList(wrapped))


def unwrap(module) -> None:
    """Undo `eliminate`: the plain layers back (the search tries many schedules on one model)."""
    layers = encoder_layers(module)
    architecture_of(module).set_layers(
        module.hf_model, torch.nn.ModuleList([layer.get_submodule("layer") for layer in layers])
    )


def predictions(module, data: TaskData, batch_size: int = 64) -> torch.Tensor:
    """The classifier's predicted class per text, texts in `data` order; each batch padded to its longest text
    (the counts are absolute, so padding changes nothing)."""
    module.eval()
    order = sorted(range(len(data)), key=lambda i: len(data.ids[i]))
    out = torch.empty(len(data), dtype=torch.long)
    with torch.no_grad():
        for start, batch in zip(range(0, len(order), batch_size), data.batches(batch_size)):
            out[order[start : start + batch_size]] = module(*batch.inputs).argmax(-1)
    return out


def search(module, texts: TaskData, seq_len: int, agreement: float) -> tuple[list[int], list[str]]:
    """Greedy per-layer halving under an agreement floor with the unchanged model; (counts, what each round did)."""
    layers = len(encoder_layers(module))
    reference = predictions(module, texts)
    longest = max(len(ids) for ids in texts.ids)
    # Counts at or above the longest search text change nothing there: start from it, not from seq_len.
    keep = [min(seq_len, longest)] * (layers - 1)
    trail = [f"start {keep} (longest search text: {longest} tokens)"]
    while True:
        best: tuple[float, list[int]] | None = None
        for i in range(layers - 1):
            if keep[i] == 1:
                continue
            trial = keep[:i] + [min(k, max(1, keep[i] // 2)) for k in keep[i:]]
            eliminate(module, trial)
            try:
                agreed = float((predictions(module, texts) == reference).float().mean())
            finally:
                unwrap(module)
            if agreed >= agreement and (best is None or agreed > best[0]):
                best = (agreed, trial)
        if best is None:
            break
        keep = best[1]
        trail.append(f"{keep}: {best[0]:.1%}")
    if len(trail) == 1:
        trail.append("no layer could be halved above the floor")
    return [min(k, seq_len) for k in keep], trail
