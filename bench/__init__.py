"""Benchmarks against other frameworks (PyTorch twins, ONNX Runtime, OpenVINO): the [bench] extra. Nothing in
facejax/ imports this package (tests/test_layout.py); launch.compare_cpu is its command."""
