"""``lora`` and ``dora``: peft's own LoRA and DoRA, unchanged (bit-identical to ``get_peft_model``).

Their adapters start as a no-op, so disabling them gives the pre-trained model (the base-class
:meth:`~balora.methods.base.Method.reference`), and peft's own files are the shareable export.
"""

from __future__ import annotations

from typing import Any

from .base import AdapterMethod


class LoraMethod(AdapterMethod):
    """LoRA (Hu et al.): W + s·B·A, A Kaiming-initialised, B = 0."""

    name = "lora"


class DoraMethod(LoraMethod):
    """DoRA (Liu et al.): a magnitude vector times the LoRA-updated, column-normalised direction."""

    name = "dora"

    def config_fields(self, **options: Any) -> dict[str, Any]:
        return {**super().config_fields(**options), "use_dora": True}
