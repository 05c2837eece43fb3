"""sst2dist: SST-2 fine-tuning with Accelerate, verified ONNX export, benchmarks and CPU serving."""

__version__ = "0.1.0"
