"""llama_fast: fast Llama generation in plain PyTorch."""
from .config import NAMED_SHAPES, ConfigError, LlamaConfig
from .generate import GenerationError, LlamaFast
from .loading import ModelNotFoundError, load_hf_model
from .api import load_model, output_hash
from .model import ForwardOptions, Transformer
from .sampling import Sampling, SamplingError

__all__ = ["LlamaConfig", "NAMED_SHAPES", "ConfigError", "GenerationError", "ModelNotFoundError", "LlamaFast",
           "ForwardOptions", "Transformer", "load_model", "load_hf_model", "output_hash",
           "Sampling", "SamplingError"]
