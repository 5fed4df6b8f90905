"""balora: BA-LoRA and Dual LoRA fine-tuning on top of transformers and peft (SPEC section 7)."""

from __future__ import annotations

__version__ = "0.1.0"
