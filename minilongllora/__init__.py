"""minilongllora: LongLoRA (Chen et al., ICLR 2024) on a minimal LLaMA, explicit, tested and measured.

    from minilongllora import LlamaConfig, Llama, from_hf, to_hf
"""

from .config import PRESETS, LlamaConfig
from .hf import from_hf, to_hf
from .model import Llama

__all__ = ["LlamaConfig", "Llama", "PRESETS", "from_hf", "to_hf"]
__version__ = "0.1.0"
