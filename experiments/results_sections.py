"""What docs/results.md shows: its sections (which experiments, which comparisons) and the papers' claims.

Each section is a generated block ``<!-- BEGIN name -->`` ... ``<!-- END name -->`` of the page; its rows
come from the committed tables of experiments/results/ (:class:`results_data.Source`). The claims are
the summary table at the top: one line per claim, the verdict from the paired bootstrap interval.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from results_data import Source
from results_sweep import sweep_pairs, sweep_sources

METRICS = [("accuracy", "test acc"), ("f1_macro", "test macro-F1"), ("val_accuracy", "val acc")]
TERMS = ("consistency", "diversity", "svd")
THREE = {"method": ("lora", "pissa", "ba-lora")}
#: the ablation's pairs, by the term left out (its experiment: ablation-no-<term>)
PAIRS = {left_out: " + ".join(t for t in TERMS if t != left_out) for left_out in TERMS}
BASIC_PAIRS = [("ba-lora", "pissa"), ("ba-lora", "lora"), ("pissa", "lora")]
FIVE_PAIRS = [*BASIC_PAIRS, ("dora", "lora"), ("dual-lora", "lora")]
# settings listed under a section when every row shares them (what varies is in the table instead)
SETUP = ["model", "dataset", "ood_dataset", "train_size", "eval_size", "epochs", "max_steps", "rank",
         "batch_size", "learning_rate_used", "warmup_ratio", "max_length", "label_noise", "imbalance_ratio",
         "auto_preset", "data_seed", "train_rows", "test_rows", "global_steps"]

# the learning-rate grid, with the main comparison's 5e-4 runs (Dual LoRA's are in the sign-grad experiment)
LR_SOURCES = [Source("main-tweets", borrowed=True), Source("sign-grad-tweets", where={"sign_grad": ("clip",)},
                                                            borrowed=True), Source("lr-tweets")]

@dataclass(frozen=True)
class Section:
    name: str  #: the page block, and the experiments/run_all.sh name that re-runs it
    sources: list[Source]
    pairs: list[tuple[str, str]]
    keys: list[str] = field(default_factory=list)  #: settings that split the rows (a column each)
    metrics: list[tuple[str, str]] = field(default_factory=lambda: METRICS)
    metric: str = "accuracy"  #: the metric compared in the paired differences
    higher_is_better: bool = True
    figure: bool = False  #: draw docs/figures/NAME.png (test metric per method, training loss; or per epoch)
    #: per-epoch columns (``--epoch-eval``, experiments/results/epochs/): a table per setting, epoch × method
    epochs: list[tuple[str, str]] = field(default_factory=list)
    #: a setting chosen per method on validation: only each method's rows at its best seed-0 ``tuned_on`` value
    tuned: str | None = None
    tuned_on: str = "val_accuracy"


SECTIONS = [
    Section("main", [Source("main-tweets"), Source("main-tweets-paper", label="ba-lora (paper λ)"),
                     Source("sign-grad-tweets", where={"sign_grad": ("clip",)}, borrowed=True)],
            [*FIVE_PAIRS, ("ba-lora", "dora"), ("ba-lora", "dual-lora"), ("ba-lora (paper λ)", "pissa")],
            figure=True),
    Section("sign-grad", [Source("sign-grad-tweets", label="dual-lora ({sign_grad})")],
            [("dual-lora (hardtanh)", "dual-lora (clip)"), ("dual-lora (identity)", "dual-lora (clip)"),
             ("dual-lora (hardtanh)", "dual-lora (identity)")], figure=True),
    Section("noise", [Source("main-tweets", where=THREE, borrowed=True), Source("noise-tweets")], BASIC_PAIRS,
            keys=["label_noise"]),
    Section("noise-epochs", [Source("noise-epochs-tweets")], BASIC_PAIRS, keys=["label_noise"],
            epochs=[("test_accuracy", "test acc"), ("noisy_fit", "noisy fit")], figure=True),
    Section("weight-sweep", sweep_sources(), sweep_pairs(),
            metrics=[("accuracy", "test acc"), ("f1_macro", "test macro-F1"), ("val_accuracy", "val acc")]),
    Section("imbalance", [Source("imbalance-tweets")], BASIC_PAIRS,
            metrics=[("accuracy", "test acc"), ("f1_macro", "macro-F1"), ("balanced_accuracy", "balanced acc")],
            metric="balanced_accuracy"),
    Section("ablation", [Source("noise-tweets", where={"method": ("pissa",), "label_noise": (0.2,)},
                                label="none (= pissa)", borrowed=True),
                         *(Source(f"ablation-{t}-only", label=f"{t} only") for t in TERMS),
                         *(Source(f"ablation-no-{t}", label=PAIRS[t]) for t in TERMS),
                         Source("noise-tweets", where={"method": ("ba-lora",), "label_noise": (0.2,)},
                                label="all three (= ba-lora)", borrowed=True)],
            [(f"{t} only", "none (= pissa)") for t in TERMS]
            + [(PAIRS[t], "none (= pissa)") for t in TERMS]
            + [("all three (= ba-lora)", PAIRS[t]) for t in TERMS]
            + [("all three (= ba-lora)", "none (= pissa)")]),
    Section("rank", [Source("main-tweets", where=THREE, borrowed=True), Source("rank-tweets")], BASIC_PAIRS,
            keys=["rank"]),
    Section("lr", LR_SOURCES, FIVE_PAIRS, keys=["learning_rate_used"]),
    Section("lr-tuned", LR_SOURCES, [*FIVE_PAIRS, ("ba-lora", "dora"), ("ba-lora", "dual-lora")],
            tuned="learning_rate_used", tuned_on="val_accuracy"),
    Section("ood", [Source("ood-tweets")], BASIC_PAIRS,
            metrics=[("accuracy", "in-domain test acc"), ("ood_accuracy", "out-of-domain acc"),
                     ("ood_f1_macro", "out-of-domain macro-F1"), ("val_accuracy", "val acc")],
            metric="ood_accuracy"),
    Section("boolq", [Source("boolq")], FIVE_PAIRS),
    Section("nlg-chain-sum", [Source("nlg-chain-sum"),
                              Source("nlg-chain-sum-base", label="base model (no adapter)", borrowed=True)],
            FIVE_PAIRS, metrics=[("exact_match", "test exact match"), ("eval_loss", "test held-out loss"),
                                 ("val_exact_match", "val exact match")], metric="exact_match"),
    Section("nlg-chain-sum-lr", [Source("nlg-chain-sum", where={"seed": (0,)}, borrowed=True),
                                 Source("nlg-chain-sum-lr", where={"seed": (0,)})], [("ba-lora", "pissa")],
            keys=["learning_rate_used"], metrics=[("val_exact_match", "val exact match"),
                                                  ("exact_match", "test exact match"),
                                                  ("eval_loss", "test held-out loss")], metric="exact_match"),
    Section("nlg-chain-sum-tuned", [Source("nlg-chain-sum", borrowed=True), Source("nlg-chain-sum-lr"),
                                    Source("nlg-chain-sum-base", label="base model (no adapter)", borrowed=True)],
            FIVE_PAIRS, metrics=[("exact_match", "test exact match"), ("eval_loss", "test held-out loss"),
                                 ("val_exact_match", "val exact match")], metric="exact_match",
            tuned="learning_rate_used", tuned_on="val_exact_match"),
    Section("nlg-chain-sum-long", [Source("nlg-chain-sum-long"),
                                   Source("nlg-chain-sum-base", label="base model (no adapter)", borrowed=True)],
            FIVE_PAIRS, metrics=[("exact_match", "test exact match"), ("eval_loss", "test held-out loss"),
                                 ("val_exact_match", "val exact match")], metric="exact_match",
            tuned="learning_rate_used", tuned_on="val_exact_match"),
    Section("nlg", [Source("nlg-gsm"), Source("nlg-gsm-base", label="base model (no adapter)", borrowed=True)],
            FIVE_PAIRS,
            metrics=[("exact_match", "test exact match"), ("eval_loss", "test held-out loss"),
                     ("val_exact_match", "val exact match")], metric="exact_match"),
]
BY_NAME = {s.name: s for s in SECTIONS}
# experiment -> the experiments/run_all.sh name that runs (and exports) it
RUN_ALL = {"main-tweets": "main", "main-tweets-paper": "paper", "sign-grad-tweets": "sign-grad",
           "noise-tweets": "noise", "noise-epochs-tweets": "noise-epochs", "imbalance-tweets": "imbalance",
           "ablation-consistency-only": "ablation", "ablation-diversity-only": "ablation",
           "ablation-svd-only": "ablation", **{f"ablation-no-{t}": "ablation" for t in TERMS},
           "rank-tweets": "rank", "lr-tweets": "lr", "ood-tweets": "ood",
           "boolq": "boolq", "nlg-gsm": "nlg", "nlg-gsm-base": "nlg",
           "nlg-chain-sum": "nlg-chain-sum", "nlg-chain-sum-base": "nlg-chain-sum",
           "nlg-chain-sum-lr": "nlg-chain-sum-lr", "nlg-chain-sum-long": "nlg-chain-sum-long",
           **{f"weight-sweep-{part}": "weight-sweep" for part in (*TERMS, "all-x10", "all-x100")}}
# experiments whose raw runs of earlier sessions were never committed and are lost (the rest: not run yet)
LOST = {"main-tweets", "main-tweets-paper", "noise-tweets", "imbalance-tweets", "ablation-consistency-only",
        "ablation-diversity-only", "ablation-svd-only", "rank-tweets", "lr-tweets", "ood-tweets", "boolq", "nlg-gsm"}


@dataclass(frozen=True)
class Claim:
    text: str
    paper: str  #: what the paper reports (typed here, not on the page: it is the claim, not a result)
    section: str
    a: str
    b: str
    where: dict[str, Any] = field(default_factory=dict)  #: the group of a section with keys
    claimed: float = 0.0  #: the smallest gain the paper reports; an interval below it is "not supported"


def _chain_sum_claims(section: str, setting: str) -> list[Claim]:
    """The three NLG claims on two-term arithmetic (exact match), in one of its settings."""
    task = f"NLG, two-term arithmetic exact match, {setting}"
    return [Claim(f"BA-LoRA beats PiSSA ({task})", "GSM8K +1.82 points over PiSSA", section, "ba-lora", "pissa",
                  claimed=0.0182),
            Claim(f"BA-LoRA beats LoRA ({task})", "ahead of LoRA on GSM8K", section, "ba-lora", "lora"),
            Claim(f"Dual LoRA beats LoRA ({task})", "the Dual LoRA paper", section, "dual-lora", "lora")]


CLAIMS = [
    Claim("BA-LoRA beats PiSSA (NLU)", "GLUE +0.59 to +1.61 points over PiSSA", "main", "ba-lora", "pissa",
          claimed=0.0059),
    Claim("BA-LoRA beats LoRA (NLU)", "ahead of LoRA on GLUE", "main", "ba-lora", "lora"),
    Claim("PiSSA beats LoRA (NLU)", "PiSSA's initialisation, which BA-LoRA builds on", "main", "pissa", "lora"),
    Claim("Dual LoRA beats LoRA at equal parameters", "the Dual LoRA paper", "main", "dual-lora", "lora"),
    Claim("BA-LoRA beats PiSSA (NLU), each at its validation-chosen rate", "GLUE +0.59 to +1.61 points over PiSSA",
          "lr-tuned", "ba-lora", "pissa", claimed=0.0059),
    Claim("BA-LoRA beats LoRA (NLU), each at its validation-chosen rate", "ahead of LoRA on GLUE", "lr-tuned",
          "ba-lora", "lora"),
    Claim("Dual LoRA beats LoRA (NLU), each at its validation-chosen rate", "the Dual LoRA paper", "lr-tuned",
          "dual-lora", "lora"),
    Claim("BA-LoRA with the paper's own λ beats PiSSA", "the paper's constants", "main", "ba-lora (paper λ)",
          "pissa"),
    Claim("BA-LoRA is more robust to label noise (noise 0.2)", "robust to noisy data", "noise", "ba-lora", "pissa",
          where={"label_noise": 0.2}),
    Claim("BA-LoRA is more robust to label noise (noise 0.4)", "robust to noisy data", "noise", "ba-lora", "pissa",
          where={"label_noise": 0.4}),
    Claim("BA-LoRA is more robust to label noise after 5 epochs (noise 0.2)", "robust to noisy data",
          "noise-epochs", "ba-lora", "pissa", where={"label_noise": 0.2}),
    Claim("BA-LoRA is more robust to label noise after 5 epochs (noise 0.4)", "robust to noisy data",
          "noise-epochs", "ba-lora", "pissa", where={"label_noise": 0.4}),
    Claim("BA-LoRA beats LoRA under label noise after 5 epochs (noise 0.4)", "robust to noisy data",
          "noise-epochs", "ba-lora", "lora", where={"label_noise": 0.4}),
    Claim("stronger regularizers help under label noise (all three ×10, noise 0.4, 5 epochs)",
          "the papers' weights are small; does more of each term help?", "weight-sweep", "all three ×10",
          "none (= pissa)"),
    Claim("BA-LoRA helps with class imbalance (balanced accuracy)", "better on imbalanced data", "imbalance",
          "ba-lora", "pissa"),
    Claim("the consistency term alone helps", "each regularizer contributes", "ablation", "consistency only",
          "none (= pissa)"),
    Claim("the diversity term alone helps", "each regularizer contributes", "ablation", "diversity only",
          "none (= pissa)"),
    Claim("the SVD term alone helps", "each regularizer contributes", "ablation", "svd only", "none (= pissa)"),
    Claim("BA-LoRA transfers better out of domain", "better on GLUE-X", "ood", "ba-lora", "pissa"),
    Claim("BA-LoRA beats PiSSA (NLG, math exact match)", "GSM8K +1.82 points over PiSSA", "nlg", "ba-lora", "pissa",
          claimed=0.0182),
    *(claim for section, setting in (("nlg-chain-sum-tuned", "each at its validation-chosen rate"),
                                     ("nlg-chain-sum-long", "twice the training budget"))
      for claim in _chain_sum_claims(section, setting)),
    Claim("BA-LoRA beats PiSSA on BoolQ", "GLUE-style gains", "boolq", "ba-lora", "pissa"),
    Claim("Sign gradient: hardtanh beats clip (Dual LoRA)", "left open by the paper", "sign-grad",
          "dual-lora (hardtanh)", "dual-lora (clip)"),
    Claim("Sign gradient: identity beats clip (Dual LoRA)", "left open by the paper", "sign-grad",
          "dual-lora (identity)", "dual-lora (clip)"),
]
