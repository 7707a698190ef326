"""Per-GPU memory of a T5 training step: model states (as DeepSpeed's estimators count them) and activations.

Model states. For bf16 (mixed precision) the figures are DeepSpeed's own formulas, those of
`estimate_zero2_model_states_mem_needs` and `estimate_zero3_model_states_mem_needs`: ZeRO-2 keeps the 16-bit
parameters whole and partitions 18 bytes per parameter (16-bit and fp32 gradients, fp32 master weights, two fp32
Adam moments: 2 + 4 + 4 + 8); ZeRO-3 partitions everything (2 + 16 bytes, no 16-bit gradients kept) and gathers
one layer at a time. DeepSpeed has no fp32 estimator; fp32 follows the same accounting with 4-byte parameters
and gradients (DeepSpeed's ZeRO optimizers still keep an fp32 master partition): ZeRO-2 4 + 16/n, ZeRO-3 20/n.

Activations. What autograd keeps for backward, counted per op of transformers' T5 (RMS norm in fp32, q/k/v/o,
relative-bias attention, ReLU or gated-GELU feed-forward, dropout masks, fp32 cross-entropy). Two attention
kernels: `fused` (CUDA SDPA memory-efficient kernel: no score matrix kept, but the per-layer bias mask is) and
`math` (CPU and eager: softmax output and dropout mask kept). The `math` figure is checked against the tensors
autograd actually saves on CPU (tests/trainer/planning/test_memory.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from trainer.models.architecture import T5Architecture

GIB = 2**30
Precision = Literal["bf16", "fp32"]
AttentionKernel = Literal["fused", "math"]
DEEPSPEED_BUFFER_FACTOR = 1.5  # DeepSpeed's estimators' `additional_buffer_factor` for host memory


@dataclass(frozen=True)
class ZeroSetup:
    """One way to shard a run: what the planner chooses between."""

    zero_stage: int
    offload_optimizer: bool = False
    offload_param: bool = False
    gradient_checkpointing: bool = False

    def describe(self) -> str:
        parts = [f"ZeRO-{self.zero_stage}"]
        if self.offload_optimizer:
            parts.append("optimizer offload")
        if self.offload_param:
            parts.append("parameter offload")
        if self.gradient_checkpointing:
            parts.append("gradient checkpointing")
        return " + ".join(parts)


@dataclass(frozen=True)
class ModelStateMemory:
    gpu_bytes: int  # per GPU
    cpu_bytes: int  # per node (DeepSpeed's "per CPU")


def model_state_memory(
    num_parameters: int,
    largest_layer_parameters: int,
    setup: ZeroSetup,
    precision: Precision,
    gpus_per_node: int,
    num_nodes: int,
) -> ModelStateMemory:
    """Parameters, gradients and optimizer states per GPU, and what ZeRO keeps in host memory per node."""
    p, largest = num_parameters, largest_layer_parameters
    total_gpus = gpus_per_node * num_nodes
    param_bytes = 2 if precision == "bf16" else 4
    # Bytes per parameter beyond the working parameters: bf16 adds 16-bit and fp32 gradients; both add the fp32
    # master copy and Adam's two moments.
    state_bytes = (2 + 4 if precision == "bf16" else 4) + 4 + 8
    buffer = DEEPSPEED_BUFFER_FACTOR
    stage = setup.zero_stage
    if setup.offload_param and stage != 3:
        raise ValueError("parameter offload needs ZeRO-3")
    if setup.offload_optimizer and stage == 0:
        raise ValueError("optimizer offload needs ZeRO-1, 2 or 3")
    if stage == 3:
        # ZeRO-3 reduce-scatters the working-precision gradients straight into the fp32 partition, so none are
        # kept: fp32 gradients, master weights and Adam's moments (16 bytes) beside the partitioned parameters.
        partitioned = 16
        gathered = 2 * param_bytes * largest  # one gathered layer and its gradient (DeepSpeed: 4 x largest in 16-bit)
        if setup.offload_param:
            return ModelStateMemory(gathered, int(p * (param_bytes + partitioned) / num_nodes * buffer))
        if setup.offload_optimizer:
            return ModelStateMemory(
                gathered + int(param_bytes * p / total_gpus), int(p * partitioned / num_nodes * buffer)
            )
        # zero.Init builds partitioned: each process only ever holds the largest layer in host memory.
        return ModelStateMemory(
            gathered + int((param_bytes + partitioned) * p / total_gpus), int(largest * 4 * gpus_per_node * buffer)
        )
    # Stages 0-2 build the whole model in host memory on every rank before moving it to the GPU.
    load_cpu = int(p * 4 * gpus_per_node * buffer)
    if setup.offload_optimizer:
        return ModelStateMemory(param_bytes * p, int(p * max(4 * total_gpus, 16) * buffer))
    if stage == 2:
        return ModelStateMemory(param_bytes * p + int(state_bytes * p / total_gpus), load_cpu)
    if stage == 1:
        grad_bytes = 2 if precision == "bf16" else 4  # the working-precision gradients stay whole
        return ModelStateMemory(
            (param_bytes + grad_bytes) * p + int((state_bytes - grad_bytes) * p / total_gpus), load_cpu
        )
    return ModelStateMemory((param_bytes + state_bytes) * p, load_cpu)


@dataclass(frozen=True)
class Workload:
    """One micro batch: sequences per GPU and their padded lengths."""

    micro_batch_size: int
    source_length: int
    target_length: int


def _norm(tokens: int, arch: T5Architecture, elem: int) -> int:
    """T5's RMS norm keeps its input in fp32, the normalised states and its output (the next matmul's input)."""
    return (4 + 2 * elem) * tokens * arch.d_model


def _attention(
    arch: T5Architecture, batch: int, q_len: int, kv_len: int, elem: int, mask: int, dropout: bool, kernel: str
) -> int:
    """q, k, v, the output and its contiguous copy (o's input), and the score-sized tensors the kernel keeps."""
    inner = arch.inner_dim
    scores = batch * arch.num_heads * q_len * kv_len
    if kernel == "fused":
        # Memory-efficient SDPA keeps q, k, v, out and log-sum-exp, and the per-layer bias + mask it was given.
        return elem * inner * batch * (3 * q_len + 2 * kv_len) + 4 * batch * arch.num_heads * q_len + elem * scores
    # Math attention (torch's CPU kernel computes in fp32) keeps scaled q and k, v, the softmax output, and the
    # dropout mask and output; the output's contiguous copy (o's input) is back in the working precision.
    work = 4
    return (
        work * inner * batch * (q_len + 2 * kv_len)
        + elem * inner * batch * q_len
        + scores * work * (3 if dropout else 1)
    )


def _feed_forward(arch: T5Architecture, tokens: int, elem: int, mask: int, dropout: bool) -> int:
    # gelu_new as transformers writes it keeps x, x/2, tanh and 1 + tanh, and the gate product both its inputs;
    # ReLU keeps its output, and wo its input (the dropout output, when there is dropout).
    kept = 7 * elem if arch.gated else (2 * elem if dropout else elem)
    return tokens * arch.d_ff * (kept + (mask if dropout else 0))


def block_activation_bytes(
    arch: T5Architecture, work: Workload, precision: Precision, kernel: AttentionKernel, decoder: bool
) -> int:
    """One encoder or decoder block, everything its backward needs."""
    elem = 2 if precision == "bf16" else 4
    mask = 1 if kernel == "fused" else elem  # CUDA keeps byte dropout masks; CPU keeps them in the input dtype
    dropout = arch.dropout_rate > 0
    b, src, tgt = work.micro_batch_size, work.source_length, work.target_length
    length = tgt if decoder else src
    tokens = b * length
    residual_dropout = (mask * tokens * arch.d_model) if dropout else 0
    total = _norm(tokens, arch, elem) + _attention(arch, b, length, length, elem, mask, dropout, kernel)
    total += residual_dropout
    if decoder:
        total += _norm(tokens, arch, elem) + _attention(arch, b, tgt, src, elem, mask, dropout, kernel)
        total += residual_dropout
    total += _norm(tokens, arch, elem) + _feed_forward(arch, tokens, elem, mask, dropout) + residual_dropout
    return total


@dataclass(frozen=True)
class ActivationMemory:
    encoder_bytes: int
    decoder_bytes: int
    output_bytes: int  # embeddings' dropout, final norms, logits and the fp32 cross-entropy
    teacher_bytes: int = 0  # a frozen KNIFE teacher's retained outputs (no autograd state)

    @property
    def total_bytes(self) -> int:
        return self.encoder_bytes + self.decoder_bytes + self.output_bytes + self.teacher_bytes


def activation_memory(
    arch: T5Architecture,
    work: Workload,
    precision: Precision,
    gradient_checkpointing: bool = False,
    kernel: AttentionKernel = "fused",
) -> ActivationMemory:
    """What one rank keeps for backward at the end of the forward pass (the activation peak).

    With gradient checkpointing each block keeps only its input; backward recomputes one block at a time,
    so one block's full activations come on top.
    """
    elem = 2 if precision == "bf16" else 4
    mask = 1 if kernel == "fused" else elem
    dropout = arch.dropout_rate > 0
    b = work.micro_batch_size
    enc_tokens, dec_tokens = b * work.source_length, b * work.target_length
    encoder_block = block_activation_bytes(arch, work, precision, kernel, decoder=False)
    decoder_block = block_activation_bytes(arch, work, precision, kernel, decoder=True)
    if gradient_checkpointing:
        encoder = arch.num_layers * elem * enc_tokens * arch.d_model
        decoder = arch.num_decoder_layers * elem * dec_tokens * arch.d_model + max(encoder_block, decoder_block)
    else:
        encoder = arch.num_layers * encoder_block
        decoder = arch.num_decoder_layers * decoder_block
    # Embedding dropout and the final norm + dropout of both stacks; the encoder output that every
    # cross-attention reads; the decoder output the LM head reads.
    ends = (_norm(enc_tokens, arch, elem) + _norm(dec_tokens, arch, elem)) + elem * (
        enc_tokens + dec_tokens
    ) * arch.d_model
    if dropout:
        ends += 2 * mask * (enc_tokens + dec_tokens) * arch.d_model
    # Logits in the working precision and the fp32 log-softmax output the cross-entropy keeps (the fp32 copy
    # of bf16 logits is transient).
    logits = dec_tokens * arch.vocab_size * (elem + 4)
    return ActivationMemory(encoder, decoder, ends + logits)


def teacher_output_bytes(arch: T5Architecture, work: Workload, precision: Precision) -> int:
    """A frozen KNIFE teacher runs without autograd; the student's losses keep its per-layer states and logits."""
    elem = 2 if precision == "bf16" else 4
    b = work.micro_batch_size
    hidden = (arch.num_layers + 1) * b * work.source_length + (arch.num_decoder_layers + 1) * b * work.target_length
    return elem * (hidden * arch.d_model + b * work.target_length * arch.vocab_size)
