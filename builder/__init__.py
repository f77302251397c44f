"""builder: the lowbit-trt command line (python -m builder) and the reference runtime."""
