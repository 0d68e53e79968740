"""One pass of the decoder over a batch of tokens: the buffers it works in, the KV cache, and the order of kernels.

A pass takes T tokens, each with its own sequence (a cache slot) and position, and runs every layer on all of them
at once, so the same code is a prefill (the prompts' tokens, ragged, one after the other), a decode step (one token
per sequence) and a plain forward (a fresh cache). Per layer, pre-LN (OPT's usual form and Llama)::

    normed   = norm_1(residual += delta)           # add_norm: the previous layer's MLP output joins the stream
    qkv      = normed @ W_qkv.T + b                # sparse (Tiled-CSL) or dense
    q, cache = split_heads(qkv)                    # RoPE for Llama; keys and values to the cache
    attn     = attention(q, cache)                 # causal, per sequence, GQA
    delta    = attn @ W_out.T + b
    normed   = norm_2(residual += delta)
    ffn      = activation(normed @ W_ffn_in.T + b) # ReLU (the product's epilogue), or SiLU-GLU of [gate; up]
    delta    = ffn @ W_ffn_out.T + b

and at the end ``final_norm(residual += delta)``, the optional ``project_out`` and the LM head on the rows whose
logits are wanted. OPT-350m's post-LN layers normalise ``residual + delta`` into the residual instead. Under
tensor parallelism (:mod:`flashllm_nb.llm.parallel`) a rank holds some heads and MLP rows, and the model's
communicator sums ``delta`` over the ranks after each of the two output projections.

Every buffer is allocated once per :class:`Activations` (and the cache once per :class:`KVCache`), so a decode step
reads and writes the same addresses every time: it can be captured once as a CUDA graph and replayed.
"""

from __future__ import annotations

import contextlib

import numpy as np

from flashllm_nb.kernels.driver import dependent_launch_scope
from flashllm_nb.llm import attention, device, kernels

__all__ = ["KVCache", "Activations", "PrefillPlanner", "run_decoder", "launch_scope", "DEPENDENT_LAUNCH_MAX_TOKENS",
           "PREFILL_POLICIES", "check_prefill_policy"]

PREFILL_POLICIES = ("auto", "sparse", "dense")
SPARSE_UP_TO_TOKENS = 64  # the Tiled-CSL kernel covers up to 64 tokens in one pass over the weights
OPT_POSITION_OFFSET = 2  # OPT's learned position table starts two rows in (HF's OPTLearnedPositionalEmbedding)


class KVCache:
    """Keys and values of ``slots`` sequences of up to ``max_len`` tokens, all layers, in one allocation.

    Layer l's keys are the flat array ``k[l]``, laid out (slot, kv_head, position, head_dim)."""

    def __init__(self, config, slots: int, max_len: int):
        self.slots, self.max_len = slots, max_len
        per_layer = slots * config.num_kv_heads * max_len * config.head_dim
        xp = device.xp()
        self._storage = xp.zeros(2 * config.num_layers * per_layer, np.uint16)
        self.k = [self._storage[(2 * i) * per_layer:(2 * i + 1) * per_layer] for i in range(config.num_layers)]
        self.v = [self._storage[(2 * i + 1) * per_layer:(2 * i + 2) * per_layer] for i in range(config.num_layers)]

    @property
    def nbytes(self) -> int:
        return int(self._storage.nbytes)

    @staticmethod
    def bytes_needed(config, slots: int, max_len: int) -> int:
        return 2 * config.num_layers * slots * config.num_kv_heads * max_len * config.head_dim * 2


class Activations:
    """Every buffer of one pass over ``tokens`` tokens (flat uint16 bit arrays; int32 token metadata).

    ``ids``, ``positions`` and ``slots`` say, per token, what it is, where it stands in its sequence and which cache
    slot holds that sequence; ``logit_rows`` rows of the final hidden states get logits in ``logits``."""

    def __init__(self, config, tokens: int, logit_rows: int):
        xp = device.xp()
        h = config.hidden_size
        self.tokens, self.logit_rows = tokens, logit_rows
        self.ids = xp.zeros(tokens, np.int32)
        self.positions = xp.zeros(tokens, np.int32)
        self.slots = xp.zeros(tokens, np.int32)
        self.residual = xp.zeros(tokens * h, np.uint16)
        self.normed = xp.zeros(tokens * h, np.uint16)
        self.delta = xp.zeros(tokens * h, np.uint16)
        self.qkv = xp.zeros(tokens * config.qkv_size, np.uint16)
        self.q = xp.zeros(tokens * config.q_size, np.uint16)
        self.attn = xp.zeros(tokens * config.q_size, np.uint16)
        self.ffn = xp.zeros(tokens * config.ffn_in_size, np.uint16)
        # ReLU works in place; SiLU-GLU halves the row
        self.act = self.ffn if config.activation == "relu" else xp.zeros(tokens * config.ffn_size, np.uint16)
        self.embed = xp.zeros(tokens * config.embed_dim, np.uint16) if config.word_embed_dim else None
        self.head_in = xp.zeros(logit_rows * config.embed_dim, np.uint16) if config.word_embed_dim else None
        self.logits = xp.zeros(logit_rows * config.vocab_size, np.uint16)
        self._heads, self._head_dim = config.num_heads, config.head_dim
        self._attention_tickets = xp.zeros(tokens * config.num_heads, np.int32)  # the kernel leaves them zero
        self._attention_partials = None

    def attention_split(self, tokens: int, spans: int) -> "attention.AttentionSplit | None":
        """The workspace of an attention over the first ``tokens`` tokens split into ``spans`` spans (None for one
        span), allocated on first use and kept, so a captured step keeps its addresses."""
        size = attention.attention_workspace_size(tokens, self._heads, self._head_dim, spans)
        if size == 0:
            return None
        if self._attention_partials is None or self._attention_partials.size < size:
            # empty, not zeros: the attention kernel writes every value before it reads it, and a zeroing kernel
            # here would run on CuPy's current stream, unordered with the engine's
            self._attention_partials = device.xp().empty(size, np.float32)
        return attention.AttentionSplit(spans, self._attention_partials, self._attention_tickets)

    @property
    def nbytes(self) -> int:
        arrays = {id(a): a for a in vars(self).values() if hasattr(a, "nbytes")}
        return int(sum(a.nbytes for a in arrays.values()))

    @staticmethod
    def bytes_needed(config, tokens: int, logit_rows: int) -> int:
        per_token = (3 * config.hidden_size + config.qkv_size + 2 * config.q_size + config.ffn_in_size
                     + (config.ffn_size if config.activation != "relu" else 0) + (config.word_embed_dim or 0)) * 2
        per_token += 12 + 4 * config.num_heads  # ids, positions, slots; attention tickets
        return tokens * per_token + logit_rows * (config.embed_dim + config.vocab_size) * 2


# Up to this many tokens a pass launches its kernels as programmatic dependents (kernels.driver); above it,
# ordinarily. Whole generations of OPT-66B at 80 % on an H100: +4.3 / +4.3 / +3.4 % at batch 1 / 4 / 8, -8.0 % at
# batch 16 (docs/e2e-results.md). The products of up to 8 tokens run in 8-wide blocks.
DEPENDENT_LAUNCH_MAX_TOKENS = 8


def launch_scope(tokens: int):
    """How a pass over ``tokens`` tokens launches: inside ``dependent_launch_scope()`` up to
    ``DEPENDENT_LAUNCH_MAX_TOKENS``, ordinarily above. Dependent launches are safe in a pass: a model's weights are
    built and synchronised before its first one (Model.__init__), so no kernel in flight writes what the SpMM kernel
    reads before it waits."""
    return dependent_launch_scope() if tokens <= DEPENDENT_LAUNCH_MAX_TOKENS else contextlib.nullcontext()


def run_decoder(model, acts: Activations, cache: KVCache, tokens: int, rows=None, stream: int = 0,
                planner: "PrefillPlanner | None" = None) -> None:
    """Run every layer on the first ``tokens`` tokens of ``acts`` and the LM head on the final hidden rows
    ``rows`` (a device int array; None: all of them, in order, as in a decode step), launched as
    :func:`launch_scope` says.

    ``planner`` decides, per sparse layer, whether it multiplies through the Tiled-CSL kernel or expands into a
    dense scratch for cuBLAS (prefill of many tokens); None keeps every layer on its own kernel."""
    with launch_scope(tokens):
        _run_layers(model, acts, cache, tokens, rows, stream, planner)


def _run_layers(model, acts: Activations, cache: KVCache, tokens: int, rows, stream: int, planner) -> None:
    c, dtype = model.config, model.dtype

    def scratch(linear, x, out):
        return None if planner is None else planner.scratch_for(linear, x, out, tokens, stream)

    h = c.hidden_size
    comm = model.communicator
    heads = attention_heads(model, cache)
    split = acts.attention_split(tokens, attention.attention_splits(tokens, c.num_heads, cache.max_len))
    _embed(model, acts, tokens, stream)
    pending = None  # the last sub-layer's output, not yet added to the residual stream (pre-LN)
    for index, block in enumerate(model.blocks):
        if c.norm_before:
            _norm(model, block.attn_norm, acts, pending, tokens, stream)
            x = acts.normed
        else:
            x = acts.residual
        block.qkv(x, acts.qkv, tokens, stream, scratch(block.qkv, x, acts.qkv))
        attention.split_heads(acts.qkv, acts.q, cache.k[index], cache.v[index], acts.slots, acts.positions,
                              model.inv_freq, tokens, heads, stream)
        attention.attention(acts.q, cache.k[index], cache.v[index], acts.slots, acts.positions, acts.attn, tokens,
                            heads, stream, split)
        block.out(acts.attn, acts.delta, tokens, stream, scratch(block.out, acts.attn, acts.delta))
        if comm is not None:  # tensor parallelism: each rank's output projection is a partial sum
            comm.all_reduce(acts.delta, tokens * h, dtype, stream)
        _norm(model, block.attn_norm if not c.norm_before else block.ffn_norm, acts, acts.delta, tokens, stream,
              post=not c.norm_before)
        x = acts.normed if c.norm_before else acts.residual
        relu = c.activation == "relu"  # in the product's epilogue; SiLU-GLU needs both halves of the row
        block.ffn_in(x, acts.ffn, tokens, stream, scratch(block.ffn_in, x, acts.ffn), relu=relu)
        if not relu:
            kernels.activation(acts.ffn, acts.act, tokens, c.ffn_size, c.activation, dtype, stream)
        block.ffn_out(acts.act, acts.delta, tokens, stream, scratch(block.ffn_out, acts.act, acts.delta))
        if comm is not None:
            comm.all_reduce(acts.delta, tokens * h, dtype, stream)
        if c.norm_before:
            pending = acts.delta
        else:
            _norm(model, block.ffn_norm, acts, acts.delta, tokens, stream, post=True)
    if c.norm_before and model.final_norm is not None:
        _norm(model, model.final_norm, acts, pending, tokens, stream)
        final = acts.normed
    else:
        if pending is not None:
            kernels.add(acts.residual, pending, tokens * h, dtype, stream)
        final = acts.residual
    _head(model, acts, final, tokens, rows, stream)


def attention_heads(model, cache: KVCache) -> attention.Heads:
    """The attention geometry of ``model`` over ``cache``."""
    c = model.config
    return attention.Heads(c.num_heads, c.num_kv_heads, c.head_dim, cache.max_len, c.sliding_window or 0,
                           c.head_dim ** -0.5, model.dtype)


def _embed(model, acts, tokens, stream) -> None:
    c, dtype = model.config, model.dtype
    positions = model.embed_positions
    if c.word_embed_dim is None:
        learned = None if positions is None else kernels.LearnedPositions(acts.positions, positions,
                                                                          OPT_POSITION_OFFSET)
        kernels.embed(acts.ids, model.embed_tokens, acts.residual, c.hidden_size, dtype, learned, tokens=tokens,
                      stream=stream)
        return
    # OPT with a narrower embedding: project it in, then add the learned positions
    kernels.embed(acts.ids, model.embed_tokens, acts.embed, c.embed_dim, dtype, tokens=tokens, stream=stream)
    model.project_in(acts.embed, acts.residual, tokens, stream)
    kernels.embed(acts.positions, positions, acts.delta, c.hidden_size, dtype, row_offset=OPT_POSITION_OFFSET,
                  tokens=tokens, stream=stream)
    kernels.add(acts.residual, acts.delta, tokens * c.hidden_size, dtype, stream)


def _norm(model, norm, acts, delta, tokens, stream, post: bool = False) -> None:
    c = model.config
    kernels.add_norm(acts.residual, delta, acts.normed, tokens, c.hidden_size,
                     kernels.NormWeights(norm.weight, norm.bias, c.norm_eps, c.norm), model.dtype, post=post,
                     stream=stream)


def _head(model, acts, final, tokens, rows, stream) -> None:
    c = model.config
    if rows is None:
        x, n = final, tokens
    else:
        xp = device.xp()
        n = int(rows.size)
        x = xp.take(final[: tokens * c.hidden_size].reshape(tokens, c.hidden_size), rows, axis=0).reshape(-1)
    if model.project_out is not None:
        model.project_out(x, acts.head_in, n, stream)
        x = acts.head_in
    model.lm_head(x, acts.logits, n, stream)


def check_prefill_policy(policy) -> None:
    """Refuse anything but one of :data:`PREFILL_POLICIES`, naming the argument."""
    if policy not in PREFILL_POLICIES:
        raise ValueError(f"Invalid value of prefill: expected one of {PREFILL_POLICIES}, got {policy!r}")


class PrefillPlanner:
    """Per sparse layer and number of tokens: the Tiled-CSL kernel, or expansion into one reused dense scratch
    buffer and cuBLAS. The kernel re-reads its weights for every 64 tokens, cuBLAS reads a dense matrix once but
    must first have it written out; which wins depends on the shape, the density and the card, so ``"auto"``
    times both once per (shape, density, power-of-two bucket of tokens) on the GPU and keeps the faster.
    ``"sparse"`` and ``"dense"`` force one (for any number of tokens); under ``"auto"`` up to 64 tokens, which the
    kernel covers in one pass, always take the kernel."""

    def __init__(self, model, policy: str = "auto"):
        self.policy = policy
        self._model = model
        self._scratch = None
        self._choices: dict[tuple, bool] = {}

    @property
    def policy(self) -> str:
        return self._policy

    @policy.setter
    def policy(self, value: str) -> None:
        check_prefill_policy(value)
        self._policy = value

    @property
    def scratch_bytes(self) -> int:
        return 0 if self._scratch is None else int(self._scratch.nbytes)

    def scratch_for(self, linear, x, out, tokens: int, stream: int):
        """The dense scratch if ``linear`` should multiply densely for ``tokens`` tokens, else None."""
        if not linear.sparse or self.policy == "sparse" or (self.policy == "auto" and tokens <= SPARSE_UP_TO_TOKENS):
            return None
        if self._scratch is None:
            largest = max(layer.rows * layer.cols for block in self._model.blocks for layer in block.linears
                          if layer.sparse)
            self._scratch = device.xp().empty(largest, np.uint16)
        if self.policy == "dense":
            return self._scratch
        key = (linear.rows, linear.cols, round(linear.sparsity, 2), 1 << (tokens - 1).bit_length())
        if key not in self._choices:
            self._choices[key] = device.SIMULATOR or self._dense_is_faster(linear, x, out, tokens, stream)
        return self._scratch if self._choices[key] else None

    def _dense_is_faster(self, linear, x, out, tokens: int, stream: int) -> bool:
        import cupy

        cupy_stream = self._model.stream.cupy_stream  # the stream every pass of this model runs on
        times = []
        for scratch in (None, self._scratch):
            linear(x, out, tokens, stream, scratch)  # warm-up: compilation, plans, workspaces
            start, stop = cupy.cuda.Event(), cupy.cuda.Event()
            start.record(cupy_stream)
            for _ in range(3):
                linear(x, out, tokens, stream, scratch)
            stop.record(cupy_stream)
            stop.synchronize()
            times.append(cupy.cuda.get_elapsed_time(start, stop))
        return times[1] < times[0]

