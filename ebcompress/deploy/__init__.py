"""Deployment: the pickle-free bundle, ONNX / TorchScript / torch.export, each verified, the
inferred ModelSpec, and the dense-vs-slim latency bench."""

from ebcompress.deploy.bundle import ModelSpec, load
from ebcompress.deploy.formats import export

__all__ = ["ModelSpec", "export", "load"]
