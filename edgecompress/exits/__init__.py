"""Early exit (DeeBERT / PABEE): a classifier ramp after each encoder layer, and the model shipped as segments.

Before -> After:
    one classifier: ids -> L layers -> head -> logits
 -> segment 0: ids (+ mask) -> embeddings, layer 1 -> (hidden, exit 1 logits)
    segment k: (hidden, mask) -> layer k+1 -> (hidden, exit k+1 logits)
    segment L-1: (hidden, mask) -> layer L -> the model's own head -> logits (exactly the original model)

The app runs segment 0, applies the exit policy (entropy or patience, in the manifest) to its logits, and runs
the next segment only when the policy says go on. `ramps.py` trains the ramps by distillation with the backbone
frozen, `policy.py` decides exits, `segments.py` exports and verifies the segment files, `ship.py` is the
pipeline's side: write, measure, report and manifest. The torch pass is `compress/early_exit.py`.
"""

# The segments' tensor names (beside the model's own input names), read by the app through the manifest.
HIDDEN_IN, HIDDEN_OUT, LOGITS = "hidden_in", "hidden", "logits"
