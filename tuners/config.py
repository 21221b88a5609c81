"""Training settings: the `tune:` config section, one typed model for every method."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Method = Literal["lora", "prefix", "full", "qlora"]


class TuneConfig(BaseModel):
    """How a round fine-tunes the model. Fields of other methods are ignored."""

    model_config = ConfigDict(extra="forbid")

    method: Method = Field("lora", description="lora | prefix | full | qlora (CUDA only).")
    # LoRA / QLoRA
    lora_r: int = Field(16, ge=1, description="LoRA rank.")
    lora_alpha: int = Field(32, ge=1, description="LoRA scaling numerator (scale = alpha / r).")
    # Without it CPU SFT ran 1.36x as fast (nn.Dropout's masks were 14-15% of a step), but a round
    # trained so lost 7 points of response-language accuracy in both seeds (bench/README.md);
    # dropout_masks: bits draws masks of the same distribution for less (SFT 1.07x).
    lora_dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA path.")
    dropout_masks: Literal["bits", "bernoulli"] = Field(
        "bits",
        description="How CPU training draws LoRA dropout's masks: bits = 16 random bits an "
        "element from 64-bit draws (tuners/dropout.py; p rounded to 1/65,536), bernoulli = "
        "torch's nn.Dropout (the same distribution, another random stream, slower on CPU: "
        "repeats runs trained before bits). GPUs use nn.Dropout's fused kernel either way.",
    )
    target_modules: str | list[str] = Field(
        "all-linear", description="Modules LoRA wraps: 'all-linear' or a list of module names."
    )
    # prefix tuning
    num_virtual_tokens: int = Field(
        16, ge=1, description="prefix: learned virtual tokens per layer."
    )
    # optimisation
    learning_rate: float | None = Field(
        None,
        gt=0,
        description="Peak LR; default 2e-4 for lora/qlora, 1e-2 for prefix, 2e-5 for full.",
    )
    epochs: float = Field(
        2.0,
        gt=0,
        description="Passes over the data (ignored if max_steps > 0). 2 by default: a round of "
        "the recipe keeps about 320-350 examples, 80-90 steps at batch 8 (a 48-task round: "
        "50-100, 13-25 steps); one pass over a few tens of examples is a step or two that "
        "barely moves the adapter.",
    )
    max_steps: int = Field(0, ge=0, description="Optimizer steps; 0 = derive from epochs.")
    batch_size: int = Field(8, ge=1, description="Examples per device per micro-batch.")
    grad_accum: int = Field(1, ge=1, description="Micro-batches per optimizer step.")
    max_seq_len: int = Field(
        1024, ge=8, description="Longest example in tokens; longer ones are an error."
    )
    packing: bool = Field(
        True,
        description="Padding-free batches: examples concatenated in one row, positions restart per "
        "example, no attention across examples. For dpo / rpo the padded batches trl makes are "
        "run as such rows (`tuners.unpad`) where the model attends per example (SDPA models).",
    )
    share_prompts: bool = Field(
        True,
        description="With packing, dpo / rpo run each pair's prompt once: the rejected answer "
        "attends to the chosen row's prompt (and any opening the two share) instead of its own "
        "copy (`tuners.unpad`; models with full attention in every layer). The same log-probs "
        "up to float order, but a shared token draws one LoRA dropout mask for both sides; "
        "false runs every row whole.",
    )
    logprob_head: Literal["selfloop", "trl"] = Field(
        "selfloop",
        description="How dpo / rpo / grpo score tokens on CPU: selfloop = the labelled positions "
        "only, their probabilities kept for backward (tuners/logprobs.py), trl = trl's fused "
        "head as it runs off GPUs (every position, in 4,096 x 32,768 tiles). In float32 training "
        "the same figures to float32 rounding (under bf16 autocast selfloop's stays float32, "
        "trl's rounds the logits); GPUs use trl's either way.",
    )
    warmup_ratio: float = Field(0.03, ge=0, lt=1, description="Share of steps with linear warm-up.")
    lr_scheduler: str = Field("cosine", description="transformers scheduler name.")
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping norm.")
    abort_grad_norm: float = Field(
        1e4, gt=0, description="A pre-clip gradient norm above this aborts the run (exploding)."
    )
    seed: int = Field(0, description="Seed for init, data order and dropout.")
    # checkpoints and logging
    save_steps: int = Field(50, ge=1, description="Checkpoint every N optimizer steps.")
    save_total_limit: int = Field(2, ge=1, description="Checkpoints kept on disk.")
    logging_steps: int = Field(1, ge=1, description="Log loss every N optimizer steps.")
    # hardware
    bf16: Literal["auto", True, False] = Field(
        "auto",
        description="bfloat16 mixed precision (autocast over float32 weights); auto = on where "
        "CUDA supports it, and for LoRA sft / dpo / rpo on a CPU with native bfloat16 "
        "(AVX512-BF16 / AMX), where the adapters' sums and the output layer stay float32 "
        "(tuners/precision.py): loss +0.0004 from float32's, SFT 1.37x and RPO 1.41x its speed "
        "(`bench/precision.py`, `bench/preference.py`). An interrupted training resumes in the "
        "precision its checkpoints recorded. true also runs prefix, full fine-tuning and grpo "
        "so on such a CPU; false = float32.",
    )
    gradient_checkpointing: Literal["auto", True, False] = Field(
        "auto",
        description="Trade compute for memory; auto = on for CUDA, off on CPU and for prefix "
        "(peft's prefix tuning does not work with it).",
    )
    fsdp: bool = Field(
        False,
        description="Shard weights, gradients and optimizer state over the processes (FSDP via "
        "accelerate) instead of replicating them; CUDA only, start with torchrun "
        "--nproc_per_node N. Not with qlora.",
    )
    fsdp_config: dict[str, Any] = Field(
        default_factory=dict,
        description="With fsdp: passed to transformers' TrainingArguments.fsdp_config (e.g. "
        "{cpu_offload: true, transformer_layer_cls_to_wrap: [LlamaDecoderLayer]}).",
    )
    # rounds
    objective: Literal["sft", "dpo", "rpo", "grpo"] = Field(
        "sft",
        description="sft: next-token loss on the kept answers; dpo: trl's DPO on preference "
        "pairs (chosen vs rejected), the reference being the adapter it starts from (the "
        "champion) or the base; rpo: DPO plus an NLL term on the chosen answer (rpo_alpha); "
        "grpo: trl's GRPO on the round's constrained tasks, the verifier's pass share as the "
        "reward (online: samples its own answers while training).",
    )
    pair_sources: list[Literal["verifier", "judge"]] = Field(
        default_factory=lambda: ["verifier"],
        description="Which of a round's preference pairs dpo / rpo train on: verifier (a clean "
        "answer passing every constraint vs one failing, from the filter stage) and/or judge "
        "(the judge's best vs worst of n; noise when a 135M model judges itself).",
    )
    dpo_beta: float = Field(
        0.1, gt=0, description="DPO's beta: how far from the reference the policy may move."
    )
    rpo_alpha: float = Field(
        1.0, gt=0, description="rpo: weight of the NLL term on the chosen answer."
    )
    grpo_generations: int = Field(
        4, ge=2, description="grpo: answers sampled per prompt (a group); divides batch_size."
    )
    grpo_max_tokens: int = Field(
        256, ge=8, description="grpo: longest sampled answer; cut-off answers are left out of "
        "the loss (trl's mask_truncated_completions).",
    )  # fmt: skip
    grpo_temperature: float = Field(0.9, gt=0, description="grpo: sampling temperature.")
    grpo_beta: float = Field(
        0.0, ge=0, description="grpo: KL weight against the base (0: no reference model, trl's "
        "default since DAPO; > 0 keeps a reference forward pass per step).",
    )  # fmt: skip
    replay: float = Field(
        0.0,
        ge=0,
        description="In the loop, with warm_start and sft: earlier accepted examples mixed into "
        "a round's training, as a share of the round's new examples (0.5 = one old per two "
        "new), so what earlier rounds taught is not trained away (model collapse).",
    )
    anchor: float = Field(
        0.0,
        ge=0,
        description="In the loop, with sft: seed tasks' written answers (run.seeds_file) mixed "
        "into each round's training, as a share of the round's new examples (0.25 = one per "
        "four new; at most every seed once). A model trained on its own answers drifts from "
        "well-written text (the helpfulness and domain suites' reference NLL rise); written "
        "answers hold it, as the general instruction mix does in Tulu 3's SFT. A seed near an "
        "eval prompt is left out (the dedup stage's contamination guard, applied in tune).",
    )
    carry_rejected: bool | None = Field(
        None,
        description="In the loop: a rejected round's kept examples still count as earlier data for "
        "later rounds (the pool a fresh adapter trains on, replay, the dedup pool). The "
        "gate rejects an adapter, not its data: verified answers (every constraint "
        "checked) stay right when one round's few examples were too small a step to clear "
        "the gate. Until a round is promoted (or always, with `warm_start: false`) each "
        "round then trains a fresh adapter on every round's data so far; after a "
        "promotion, each round trains from the champion on its own data and that of the "
        "rounds rejected since. null (default) = on when no source relies on the LLM "
        "judge (run.sources of constraints / import only): a self-judged round's data is "
        "only as good as its judge. Four draws of a recipe round pooled (264 verified "
        "answers) moved the IF suite +5.5 [+2.3, +8.7] points where each alone moved it "
        "+0.0 to +3.8, reference NLL unchanged; in one seed's run, 134 and 183 carried "
        "answers moved it +2.9 each, not enough to promote (bench/README.md).",
    )
    greedy_pairs: int | None = Field(
        None,
        ge=0,
        description="In the loop, after sft: the new adapter answers the tasks its data came from "
        "greedily (as the IF suite is answered), and each answer that is cut off, fails a "
        "quality filter (repetitive...) or misses a constraint becomes the rejected side of "
        "up to this many pairs, each against a verified answer to the same task; "
        "`greedy_objective` then trains on the pairs from the sft adapter, which is also the "
        "reference. Only an sft round with a LoRA adapter has the step (other objectives and "
        "methods ignore it). 0 = off; null (default) = 2 in a loop whose sources include "
        "constraints, with sft and a LoRA adapter, else 0. Greedy decoding is where a 135M "
        "model loops (40% of its IF answers run to the token limit), which the "
        "temperature-1.0 samples sft learns from never show it: on one seed's three rounds of "
        "data (105 pairs, 14 steps) the step cut those answers 131 -> 89 and moved the IF "
        "suite +4.1 over the sft adapter, +9.0 [+4.4, +14.0] over the base (bench/README.md, "
        "bench/greedy_pairs.py).",
    )
    greedy_match: Literal["order", "length"] = Field(
        "order",
        description="greedy_pairs: which verified answers of a task a greedy failure is paired "
        "with: the first ones (order) or those closest to it in word count (length). A "
        "cut-off loop against a short answer teaches brevity too: in the loop runs' third "
        "rounds the IF suite's min_sentences prompts fell from 0.87 to 0.52-0.61 "
        "(bench/README.md). "
        "Measured on one round (seed 1, the same sft adapter and 71 pairs, 19 of them with "
        "another chosen answer): length -0.3 [-3.5, +2.9] points against order, so order stays.",
    )
    greedy_repair: bool = Field(
        False,
        description="greedy_pairs: a greedy failure that can be made good with the least change "
        "- cut where it starts to loop, then the mechanical repairs of the constraints it "
        "misses (judges/repair.py), checked strictly and by the quality filters - gets one "
        "more pair: its own repair against it. The two answers differ only where it went "
        "wrong, and a task no sample passed (all lowercase...) gets a pair. Measured on one "
        "round (seed 0, bfloat16, the same sft adapter): 12 more pairs to the step's 58, IF "
        "+0.3 [-3.2, +3.8] points against the step without them (bench/README.md): off.",
    )
    greedy_objective: Literal["dpo", "rpo"] = Field(
        "rpo", description="greedy_pairs: the preference loss of the step after sft."
    )
    greedy_learning_rate: float = Field(
        2e-4,
        gt=0,
        description="greedy_pairs: the step's peak LR (at DPO's usual 5e-5 the same pairs "
        "moved the IF suite -0.3 and the cut-off answers 131 -> 123).",
    )
    greedy_epochs: float = Field(1.0, gt=0, description="greedy_pairs: passes over the pairs.")
    greedy_steps: int = Field(
        1,
        ge=1,
        description="greedy_pairs: how many times the step runs. Each step after the first "
        "starts from the adapter the one before trained: it answers the same tasks greedily "
        "again and trains against the failures that remain (on-policy, as iterative DPO "
        "does), where another epoch would train again on failures the model may no longer "
        "make. Stops early when a step's failures give no pair (none failed, or the tasks "
        "that did have no verified answer). Measured on one round (seed 1): two steps vs one "
        "-0.6 [-4.4, +3.2] points on the IF suite, 12 fewer answers cut off (bench/README.md): 1.",
    )
    greedy_batch_size: int = Field(
        2,
        ge=1,
        description="greedy_pairs: pairs per forward pass of the step; gradient accumulation "
        "makes up the batch_size x grad_accum pairs of an optimizer step. The step's rejected "
        "answers run to the length limit: on 2 CPU cores (bench/preference.py, 100 pairs of a "
        "loop run) 8 pairs a pass peaked at 15.5 GB and 58 s a step, 2 pairs x 4 at 6.1 GB "
        "and 35 s (bench/README.md).",
    )
    warm_start: bool = Field(
        True,
        description="Continue from the champion adapter (true) or train a fresh adapter from the "
        "base on the accumulated pool (false). Default true: a round adds a little data, and "
        "continuing keeps what earlier rounds learned without re-paying for the whole pool.",
    )

    @model_validator(mode="after")
    def _consistent(self) -> TuneConfig:
        if problem := self.conflict():
            raise ValueError(problem)
        return self

    def conflict(self) -> str | None:
        """Why these settings cannot train together, or None. (`train` asks again: a config
        built with `model_copy(update=...)` skips validation.)"""
        if self.method == "prefix" and self.gradient_checkpointing is True:
            return (
                "tune.gradient_checkpointing=true does not work with tune.method=prefix (peft "
                "feeds the prefix as a KV cache, which checkpointing cannot); use auto or false"
            )
        if self.fsdp_config and not self.fsdp:
            return "tune.fsdp_config is set but tune.fsdp is false"
        if self.objective != "sft" and self.method not in ("lora", "qlora"):
            return (
                f"tune.objective={self.objective} trains a LoRA adapter against its starting "
                f"point as the reference; use tune.method=lora or qlora (not {self.method})"
            )
        if self.objective != "sft" and self.fsdp:
            return f"tune.objective={self.objective} does not support tune.fsdp"
        if self.objective == "grpo" and (self.batch_size * self.grad_accum) % self.grpo_generations:
            return (
                f"tune.objective=grpo samples tune.grpo_generations={self.grpo_generations} "
                f"answers per prompt: tune.batch_size x grad_accum "
                f"({self.batch_size * self.grad_accum}) must be a multiple of it"
            )
        if self.fsdp and self.method == "qlora":
            return "tune.fsdp does not support tune.method=qlora; run qlora data-parallel instead"
        return None

    def lr(self) -> float:
        if self.learning_rate is not None:
            return self.learning_rate
        if self.objective != "sft":  # preference / RL steps move far: DPO's usual LoRA rate
            return 5e-5
        return {"lora": 2e-4, "qlora": 2e-4, "prefix": 1e-2, "full": 2e-5}[self.method]
