"""Calibration: measured per-op-class prices and thread scaling of one target, in a file a device profile names.

suite.py    the micro-benchmark graphs, built in code
model.py    the latency model the prices belong to, its non-negative least-squares fit and thread scaling
nnls.py     the solver
store.py    the calibration file: what was measured where and how, the fitted prices; strict loading
run.py      `edgecompress calibrate`: measure the suite through a transport and fit
"""
