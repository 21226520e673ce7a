"""edgecompress: compress a BERT-class text model into a mobile artifact proven to fit a named phone.

Importing the package is cheap: torch, onnx and onnxruntime load only when a stage needs them.
"""

__version__ = "0.1.0"
