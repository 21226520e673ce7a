"""Integer-only inference in the style of I-BERT (Kim et al. 2021): integer kernels, the integer model and its ONNX
lowering."""
