"""converters: Hugging Face model -> calibrated, quantized TensorRT-LLM checkpoint."""
