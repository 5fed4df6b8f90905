"""The adapter options of a run: one declaration, read by every method and by the command line.

The field names are the command-line flags, YAML keys and ``config.yaml`` keys. ``rank`` is the one name
that differs from :func:`balora.adapt`'s argument (``r``, peft's name); both names are fixed by the
public surface. Each method says which of these fields it reads (:attr:`Method.reads`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import ConfigError
from ..pissa_init import DEFAULT_NITER, DEFAULT_OVERSAMPLE


def _opt(default, help: str, **extra):
    return field(default=default, metadata={"help": help, **extra})


@dataclass
class AdapterOptions:
    """How the adapter is built; see each field's help."""

    rank: int = _opt(16, "adapter rank r (dual-lora: r1 + r2 = r)")
    lora_alpha: float | None = _opt(None, "adapter alpha (default: r, i.e. scale 1)")
    target_modules: str = _opt("all-linear", "comma-separated module names, or all-linear")
    lora_dropout: float = _opt(0.0, "dropout on the adapter's input")
    r1: int | None = _opt(None, "dual-lora magnitude rank (default r/2)")
    r2: int | None = _opt(None, "dual-lora direction rank (default r - r1)")
    dual_warmup_steps: int | None = _opt(None, "dual-lora warm-up steps of the update factor (default: 10%% of "
                                               "the training steps, at most 100)")
    sign_grad: str = _opt("clip", "dual-lora: Sign's straight-through gradient: clip (incoming gradient clamped "
                                  "to [-1, 1]), hardtanh (passed where |DC| <= 1, else 0) or identity",
                          choices=("clip", "hardtanh", "identity"))
    pissa_niter: int | None = _opt(DEFAULT_NITER, "PiSSA randomized-SVD power iterations; 0 = exact SVD")
    pissa_oversample: int = _opt(DEFAULT_OVERSAMPLE, "PiSSA randomized-SVD extra range-finder columns (q = r + "
                                                      "this); 0 = peft's own pissa_niter_K")
    quantize: str | None = _opt(None, "quantize the frozen base linear layers with bitsandbytes: nf4 (4-bit, "
                                      "QLoRA; pissa/ba-lora: SVD first, then the residual, QPiSSA) or int8",
                                choices=("nf4", "int8"))

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ConfigError(f"--rank must be >= 1, got {self.rank}.")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ConfigError(f"--lora-dropout must be in [0, 1), got {self.lora_dropout}.")
        if self.pissa_niter is not None and self.pissa_niter < 0:
            raise ConfigError(f"--pissa-niter must be >= 0, got {self.pissa_niter}.")
        if self.pissa_oversample < 0:
            raise ConfigError(f"--pissa-oversample must be >= 0, got {self.pissa_oversample}.")
        if self.sign_grad not in ("clip", "hardtanh", "identity"):
            raise ConfigError(f"--sign-grad must be clip, hardtanh or identity, got {self.sign_grad!r}.")
        if self.dual_warmup_steps is not None and self.dual_warmup_steps < 0:
            raise ConfigError(f"--dual-warmup-steps must be >= 0, got {self.dual_warmup_steps}.")

    @property
    def target_list(self) -> list[str] | str:
        """peft's ``target_modules``: ``"all-linear"`` or a list of names."""
        if self.target_modules == "all-linear":
            return self.target_modules
        return [name.strip() for name in self.target_modules.split(",") if name.strip()]

    def common_kwargs(self) -> dict:
        """The :func:`balora.adapt` arguments every adapter method takes."""
        return {"r": self.rank, "lora_alpha": self.lora_alpha, "target_modules": self.target_list,
                "lora_dropout": self.lora_dropout, "quantize": self.quantize}
