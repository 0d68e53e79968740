"""Text generation: a batch of prompts of any lengths, a KV cache allocated once, greedy or sampled decoding, and a
decode step captured once as a CUDA graph and replayed for every token.

::

    prefill:  all prompt tokens in one pass (ragged: each with its sequence's slot and position) -> first tokens
    decode:   step(ids) = decoder(one token per sequence) -> logits -> next ids -> record, positions += 1
              greedy: argmax and the bookkeeping run on the device inside the step, so the whole step is one graph
              launch and the host only checks every CHECK_EVERY steps whether every sequence has ended
              sampled: the graph stops at the logits; temperature / top-p sampling runs after it (CuPy ops)

Sequences that end early keep stepping with the rest (the graph's shapes are fixed); their tokens after the end are
replaced by the pad id in the result.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from numbers import Real
from typing import Any, Sequence

import numpy as np

from flashllm_nb._checks import invalid
from flashllm_nb.llm import attention, device, kernels, memory
from flashllm_nb.llm.dense import bits_to_float32
from flashllm_nb.llm.engine import Activations, KVCache, launch_scope, run_decoder

__all__ = ["generate", "GenerationStats", "sample"]

CHECK_EVERY = 16  # decode steps between the host's looks at which sequences have ended (one synchronisation)


@dataclass
class GenerationStats:
    """What one :func:`generate` call measured (seconds, bytes; wall-clock, the GPU synchronised at each mark)."""

    batch: int
    prompt_tokens: int
    new_tokens: int  # per sequence, the most any sequence generated
    decode_steps: int
    time_to_first_token_s: float
    decode_s: float
    host_step_s: float  # the host's time to issue one step: 10th percentile over steps (excludes launch-queue waits)
    graph: bool
    memory: dict[str, int] = field(default_factory=dict)

    @property
    def decode_tokens_per_s(self) -> float:
        """Tokens produced per second by the decode steps, all sequences together."""
        return self.batch * self.decode_steps / self.decode_s if self.decode_s > 0 else float("nan")

    @property
    def total_s(self) -> float:
        return self.time_to_first_token_s + self.decode_s


def _prompts(prompts, model) -> tuple[list[np.ndarray], bool]:
    """The prompts as a list of 1-D int64 host arrays, and whether they came as one 2-D array."""
    if hasattr(prompts, "ndim") and getattr(prompts, "ndim") == 2:
        array = device.to_host(prompts) if not isinstance(prompts, np.ndarray) else prompts
        rows, rectangular = [np.asarray(r) for r in array], True
    elif isinstance(prompts, (list, tuple)) and prompts and all(np.ndim(p) == 1 for p in prompts):
        rows, rectangular = [np.asarray(device.to_host(p) if hasattr(p, "get") else p) for p in prompts], False
    else:
        raise invalid("type", "prompts", "a 2-D array (batch, seq) or a non-empty list of 1-D token sequences",
                      type(prompts).__name__, TypeError)
    for i, row in enumerate(rows):
        if row.size == 0:
            raise invalid("value", f"prompts[{i}]", "at least one token", "an empty sequence")
        if row.dtype.kind not in "iu":
            raise invalid("dtype", f"prompts[{i}]", "integers", row.dtype, TypeError)
        model.check_tokens(row, f"prompts[{i}]")
    return [r.astype(np.int64) for r in rows], rectangular


def generate(model, prompts, max_new_tokens: int = 64, temperature: float = 0.0, top_p: float = 1.0,
             seed: int | None = None, eos_token_id: int | Sequence[int] | None = "config", use_graph: bool = True,
             return_stats: bool = False, output_logits: bool = False) -> Any:
    """Continue each prompt by up to ``max_new_tokens`` tokens.

    Parameters
    ----------
    model : Model
    prompts : 2-D int array (batch, seq), or a list of 1-D int sequences of any lengths
    max_new_tokens : int
    temperature : float
        0 for greedy decoding (argmax), else logits / temperature are sampled.
    top_p : float in (0, 1]
        Nucleus sampling: only the most probable tokens whose probabilities sum to ``top_p`` are drawn from.
    seed : int, optional
        Seeds the sampler (the same seed gives the same tokens on the same device).
    eos_token_id : int, list of int, None, or "config"
        Ids that end a sequence; "config" takes the model's; None never ends early.
    use_graph : bool
        Capture the decode step as a CUDA graph (GPU only; ignored under the simulator).
    return_stats : bool
        Also return a :class:`GenerationStats`.
    output_logits : bool
        Also return the logits each new token was chosen from: float32 (batch, new tokens, vocab) on the host
        (one device-to-host copy per step: for checking, not for speed).

    Returns
    -------
    tokens
        For a 2-D ``prompts``: an int64 array (batch, seq + max_new_tokens), positions after a sequence's end filled
        with the pad id (the model's, else its end id, else 0). For a list: a list of 1-D int64 arrays, each prompt
        followed by its new tokens up to and including its end id.
    stats : GenerationStats
        Only with ``return_stats``.
    logits : numpy.ndarray
        Only with ``output_logits``.
    """
    rows, rectangular = _prompts(prompts, model)
    eos = _check_settings(model, rows, max_new_tokens, temperature, top_p, eos_token_id)
    lengths = np.array([r.size for r in rows])
    batch = len(rows)
    # the last token fed to the decoder stands at position longest + max_new_tokens - 2
    max_len = int(lengths.max()) + max_new_tokens - 1
    memory.check_generate_fits(memory.predict_generate(model, batch, max_len, int(lengths.sum())), batch, max_len)
    run = _Decoding(model, batch, max_len, max_new_tokens, eos, temperature, top_p, seed, output_logits)
    start = _now(model.stream)
    run.prefill(rows, lengths)
    first_token = _now(model.stream)
    steps, graph, issue_s = run.decode(use_graph)
    end = _now(model.stream)
    generated = device.to_host(run.history).reshape(batch, max_new_tokens)[:, : steps + 1].astype(np.int64)
    stats = GenerationStats(batch=batch, prompt_tokens=int(lengths.sum()), new_tokens=steps + 1, decode_steps=steps,
                            time_to_first_token_s=first_token - start, decode_s=end - first_token,
                            host_step_s=float(np.percentile(issue_s, 10)) if issue_s else 0.0,
                            graph=graph, memory={**model.memory(), **run.memory_used})
    result = _assemble(rows, generated, eos, rectangular, max_new_tokens, model.config)
    extras = ((stats,) if return_stats else ()) + ((np.stack(run.collected, axis=1),) if output_logits else ())
    return (result, *extras) if extras else result


def _check_settings(model, rows, max_new_tokens, temperature, top_p, eos_token_id) -> list[int]:
    """Every setting of :func:`generate` checked before anything runs; returns the end ids."""
    c = model.config
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 1:
        raise invalid("value", "max_new_tokens", "an integer >= 1", max_new_tokens)
    if isinstance(temperature, bool) or not isinstance(temperature, Real) or not 0 <= temperature < np.inf:
        raise invalid("value", "temperature", "a finite number >= 0", temperature)
    if isinstance(top_p, bool) or not isinstance(top_p, Real) or not 0 < top_p <= 1:
        raise invalid("value", "top_p", "a number in (0, 1]", top_p)
    if isinstance(eos_token_id, str):
        if eos_token_id != "config":
            raise invalid("value", "eos_token_id", "an id, a sequence of ids, None or 'config'", eos_token_id)
        eos = list(c.eos_token_id)
    elif eos_token_id is None:
        eos = []
    else:
        ids = np.atleast_1d(np.asarray(eos_token_id))
        if ids.ndim != 1 or ids.dtype.kind not in "iu" or ((ids < 0) | (ids >= c.vocab_size)).any():
            raise invalid("value", "eos_token_id", f"token ids in [0, {c.vocab_size}) (an id or a sequence of ids)",
                          eos_token_id)
        eos = [int(i) for i in ids]
    longest = max(r.size for r in rows)
    if longest > c.max_positions:
        raise invalid("shape", "prompts", f"at most {c.max_positions} tokens per prompt (the model's positions)",
                      f"a prompt of {longest}")
    if longest + max_new_tokens - 1 > c.max_positions:
        raise invalid("value", "max_new_tokens", f"at most {c.max_positions - longest + 1} for a {longest}-token "
                      f"prompt (the model has {c.max_positions} positions)", max_new_tokens)
    if len(rows) > 1024:
        raise invalid("value", "prompts", "at most 1024 sequences", len(rows))
    return eos


class _Decoding:
    """One generation's device state: the KV cache, the decode step's buffers, the tokens so far, and the step
    itself (eager, or captured once and replayed)."""

    def __init__(self, model, batch, max_len, max_new_tokens, eos, temperature, top_p, seed, output_logits):
        xp = device.xp()
        self.model, self.batch, self.max_new_tokens = model, batch, max_new_tokens
        self.greedy = temperature == 0
        self.temperature, self.top_p = temperature, top_p
        self.eos = eos
        self.stream = model.stream
        with self.stream:  # every array is made on the engine's stream, ordered with its kernels
            self.history = xp.zeros(batch * max_new_tokens, np.int32)
            self.done = xp.zeros(batch, np.int32)
            self.step_counter = xp.zeros(1, np.int32)
            self.eos_ids = xp.asarray(np.array(eos or [-1], np.int32))
            self.generator = None if self.greedy else xp.random.default_rng(seed)
            self.cache = KVCache(model.config, batch, max_len)
            self.acts = Activations(model.config, batch, batch)
        self.collected = [] if output_logits else None
        self.memory_used = {}
        attention.compile_attention(model.dtype, model.config.head_dim)

    def prefill(self, rows, lengths) -> None:
        """Every prompt token in one ragged pass, then the first new token of each sequence."""
        xp, model, stream, batch = device.xp(), self.model, self.stream, self.batch
        tokens = int(lengths.sum())
        with stream:
            prefill = Activations(model.config, tokens, batch)
            prefill.ids[...] = xp.asarray(np.concatenate(rows).astype(np.int32))
            prefill.positions[...] = xp.asarray(np.concatenate([np.arange(n, dtype=np.int32) for n in lengths]))
            prefill.slots[...] = xp.asarray(np.repeat(np.arange(batch, dtype=np.int32), lengths))
            last_rows = xp.asarray((np.cumsum(lengths) - 1).astype(np.int64))
            run_decoder(model, prefill, self.cache, tokens, rows=last_rows, stream=stream.ptr, planner=model.prefill)
            self.acts.slots[...] = xp.arange(batch, dtype=np.int32)
            # acts.positions holds the position of the token in acts.ids; finish_step moves it on from the last
            # prompt token's to the first new token's
            self.acts.positions[...] = xp.asarray((lengths - 1).astype(np.int32))
            self._choose_and_record(prefill.logits, self.greedy)
            self.memory_used = {"kv_cache": self.cache.nbytes, "activations": prefill.nbytes + self.acts.nbytes,
                                "prefill_scratch": model.prefill.scratch_bytes}

    def _choose_and_record(self, logits, greedy: bool) -> None:
        if self.collected is not None:
            self.collected.append(_logits_host(self.model, logits, self.batch))
        _choose(self.model, logits, self.acts.ids, self.batch, greedy, self.temperature, self.top_p,
                self.generator, self.stream)
        kernels.finish_step(self.acts.ids, self.acts.positions, self.history, self.done, self.step_counter,
                            self.eos_ids, self.batch, self.max_new_tokens, self.stream.ptr)

    def _step(self) -> None:
        """What the graph holds: the decoder on one token per sequence, and, greedy, the choice and bookkeeping
        (launched as the decoder's kernels are: ``engine.launch_scope``)."""
        with launch_scope(self.batch):
            run_decoder(self.model, self.acts, self.cache, self.batch, stream=self.stream.ptr)
            if self.greedy:
                _choose(self.model, self.acts.logits, self.acts.ids, self.batch, True, 0.0, 1.0, None, self.stream)
                kernels.finish_step(self.acts.ids, self.acts.positions, self.history, self.done, self.step_counter,
                                    self.eos_ids, self.batch, self.max_new_tokens, self.stream.ptr)

    def decode(self, use_graph: bool) -> tuple[int, bool, list[float]]:
        """The decode steps, until every sequence has ended or has its tokens; returns (steps, whether a graph
        ran them, the host's time to issue each step)."""
        stream = self.stream
        graph = None
        steps = 0
        issue_s: list[float] = []
        with stream:
            for index in range(self.max_new_tokens - 1):
                if index % CHECK_EVERY == 0 and self.eos and bool(self.done.all()):  # synchronize!
                    break
                issued = time.perf_counter()
                if graph is not None:
                    graph.launch(stream=stream.cupy_stream)
                elif index == 1 and use_graph and not device.SIMULATOR:
                    # the first step ran eagerly (compiling kernels, creating plans and workspaces): capture the
                    # second
                    graph = _capture(self._step, stream)
                    graph.launch(stream=stream.cupy_stream)
                else:
                    self._step()
                if self.collected is not None and self.greedy:
                    self.collected.append(_logits_host(self.model, self.acts.logits, self.batch))
                elif not self.greedy:
                    self._choose_and_record(self.acts.logits, False)
                issue_s.append(time.perf_counter() - issued)
                steps += 1
        return steps, graph is not None, issue_s


def _logits_host(model, logits, batch) -> np.ndarray:
    vocab = model.config.vocab_size
    return device.to_host(bits_to_float32(logits[: batch * vocab], model.dtype)).reshape(batch, vocab)


def _capture(step, stream):
    """``step``'s launches on ``stream`` as a CUDA graph; the capture is ended (and the graph dropped) if the step
    raises, so the stream is usable again."""
    stream.cupy_stream.begin_capture()
    try:
        step()
    except BaseException:
        stream.cupy_stream.end_capture()
        raise
    return stream.cupy_stream.end_capture()


def _now(stream) -> float:
    stream.synchronize()
    return time.perf_counter()


def _choose(model, logits, out_ids, batch, greedy, temperature, top_p, generator, stream) -> None:
    """The next token of each sequence from its logits row, into ``out_ids`` (device int32)."""
    vocab = model.config.vocab_size
    if greedy:
        kernels.argmax(logits, out_ids, batch, vocab, model.dtype, stream.ptr)
    else:
        out_ids[...] = sample(bits_to_float32(logits[: batch * vocab], model.dtype).reshape(batch, vocab),
                              temperature, top_p, generator)


def sample(logits, temperature: float, top_p: float, generator) -> Any:
    """One token per row of float32 ``logits`` (NumPy or CuPy), drawn from ``softmax(logits / temperature)``
    restricted to the nucleus: the most probable tokens whose probabilities first reach ``top_p`` (Hugging Face's
    top-p rule; the most probable token is always kept). Inverse-CDF sampling, one uniform draw per row from
    ``generator``; returns int32 ids."""
    xp = device.xp() if not isinstance(logits, np.ndarray) else np
    scaled = logits / np.float32(temperature)
    scaled -= scaled.max(axis=1, keepdims=True)
    probabilities = xp.exp(scaled)
    order = xp.argsort(-probabilities, axis=1, kind="stable") if xp is np else xp.argsort(-probabilities, axis=1)
    sorted_p = xp.take_along_axis(probabilities, order, axis=1)
    sorted_p /= sorted_p.sum(axis=1, keepdims=True)
    if top_p < 1:
        before = xp.cumsum(sorted_p, axis=1) - sorted_p  # probability of the tokens ranked above each one
        sorted_p = xp.where(before < top_p, sorted_p, np.float32(0))
        sorted_p /= sorted_p.sum(axis=1, keepdims=True)
    cdf = xp.cumsum(sorted_p, axis=1)
    u = generator.random((logits.shape[0], 1), dtype=np.float32)
    rank = xp.minimum((cdf < u * cdf[:, -1:]).sum(axis=1), logits.shape[1] - 1)
    return xp.take_along_axis(order, rank[:, None], axis=1)[:, 0].astype(np.int32)


def _assemble(rows, generated, eos, rectangular, max_new_tokens, config):
    """Prompts and their generated tokens, cut after each sequence's first end id."""
    pad = config.pad_token_id if config.pad_token_id is not None else (eos[0] if eos else 0)
    outputs = []
    for prompt, new in zip(rows, generated):
        ends = np.flatnonzero(np.isin(new, eos)) if eos else np.array([], np.int64)
        outputs.append(np.concatenate([prompt, new[: ends[0] + 1] if ends.size else new]))
    if not rectangular:
        return outputs
    width = rows[0].size + max_new_tokens
    result = np.full((len(rows), width), pad, np.int64)
    for i, out in enumerate(outputs):
        result[i, : out.size] = out
    return result
