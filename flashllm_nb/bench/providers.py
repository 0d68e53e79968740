"""The lines of the sweep: every implementation of ``Y = X @ W.T`` that is timed, as one declared registry.

A provider is two small functions and a name:

- ``unavailable(dtype, sparsity)`` returns ``None`` when it can run that case, else the reason it is skipped
  ("PyTorch is not installed", "2:4 is 50 % sparsity by construction"): the reason is printed under the tables;
- ``prepare(W) -> Prepared`` encodes the pruned weights once (CSR, 2:4, Tiled-CSL, or a plain copy) and returns
  their size in bytes and ``bind(X) -> call``: ``call()`` runs one product on the device and returns Y (N, M) or
  a view of it. The runner calls ``prepare`` once per rotation slot, so it must return storage of its own, never
  a view of ``W``; ``bind`` allocates the output once, so allocation is not timed where the API takes ``out=``.

Arrays arrive in the run's native form: CuPy float16 for ``--dtype fp16``; PyTorch bfloat16 on the GPU for
``--dtype bf16`` (the format layer reads bf16 through DLPack from torch); NumPy under the simulator. Adding a
format or kernel is one ``register(Provider(...))`` call at the end of this file.
"""

from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass
from typing import Any, Callable

__all__ = [
    "BASELINE", "Prepared", "Provider", "PROVIDERS", "register", "module_unavailable", "array_kind", "as_torch",
    "as_cupy", "to_cupy_float32", "empty_rows", "dense_product",
]

#: The provider every speedup is measured against.
BASELINE = "cublas"


@dataclass(frozen=True)
class Prepared:
    """One provider's encoded weights, ready to multiply any X."""

    nbytes: int  # bytes of the weight representation one product reads
    bind: Callable[[Any], Callable[[], Any]]  # X (N, K) -> call; call() returns Y (N, M) or a view of it
    act_itemsize: int | None = None  # bytes per activation/output element when not the run's dtype (fp32 fallback)
    weight: Any = None  # the dense W it really multiplies when not the given one (2:4 re-pruning); None = same
    encoded: Any = None  # the library object (TiledCSL), for the simulator's float64 reference
    note: str = ""  # printed under the tables once per provider


@dataclass(frozen=True)
class Provider:
    """One line of the sweep (see the module docstring)."""

    name: str  # key on the command line (--providers) and in the result files
    label: str  # column and legend title
    unavailable: Callable[[str, float], str | None]  # (dtype "fp16"/"bf16", sparsity) -> reason, or None
    prepare: Callable[[Any], Prepared]  # W (M, K), pruned -> Prepared
    simulator: bool = False  # runs under Numba's CUDA simulator too (NumPy in, NumPy out): flashllm_nb's kernels
    ours: bool = False  # one of flashllm_nb's kernels: a wrong result makes the benchmark exit non-zero


PROVIDERS: dict[str, Provider] = {}


def register(provider: Provider) -> Provider:
    """Add ``provider`` to :data:`PROVIDERS` (in declaration order: the order of table columns and legends)."""
    if provider.name in PROVIDERS:
        raise ValueError(f"Invalid value of provider.name: expected a new name, got {provider.name!r} (taken)")
    PROVIDERS[provider.name] = provider
    return provider


# --------------------------------------------------------------------------------------------- array plumbing

def array_kind(a: Any) -> str:
    """``"cupy"``, ``"torch"`` or ``"numpy"``: the module an array comes from."""
    return type(a).__module__.split(".", 1)[0]


def as_torch(a: Any) -> Any:
    """The same device memory as a torch tensor (DLPack, no copy)."""
    import torch

    return a if array_kind(a) == "torch" else torch.from_dlpack(a)


def as_cupy(a: Any) -> Any:
    """The same device memory as a CuPy array (DLPack, no copy); fp16/fp32 only on CuPy versions without bf16."""
    import cupy

    return a if array_kind(a) == "cupy" else cupy.from_dlpack(a)


def to_cupy_float32(a: Any) -> Any:
    """A new C-contiguous CuPy float32 copy of a CuPy array or CUDA tensor of any float type."""
    import cupy

    if array_kind(a) == "torch":
        return cupy.from_dlpack(a.float().contiguous())
    return cupy.ascontiguousarray(a, dtype=cupy.float32)


def empty_rows(like: Any, shape: tuple[int, int]) -> Any:
    """An uninitialised array of ``shape`` in the same module, dtype and device as ``like``."""
    kind = array_kind(like)
    if kind == "torch":
        import torch

        return torch.empty(shape, dtype=like.dtype, device=like.device)
    module = importlib.import_module(kind)
    return module.empty(shape, dtype=like.dtype)


def dense_product(X: Any, W: Any, out: Any) -> Any:
    """``out[...] = X @ W.T`` through cuBLAS: ``cupy.matmul`` for CuPy arrays, ``torch.matmul`` for tensors.

    Both call cublasGemmEx with fp32 accumulation on W's memory as it is (the transpose is a cuBLAS flag, no copy).
    """
    if array_kind(X) == "torch":
        import torch

        return torch.matmul(X, W.T, out=out)
    import cupy

    return cupy.matmul(X, W.T, out=out)


def _nbytes(a: Any) -> int:
    return int(a.numel() * a.element_size()) if array_kind(a) == "torch" else int(a.nbytes)


# ------------------------------------------------------------------------------------------ availability checks

@functools.cache
def module_unavailable(module: str) -> str | None:
    """Why ``module`` cannot be used on the GPU here, or None."""
    try:
        mod = importlib.import_module(module)
    except Exception as exc:  # ImportError, or a CUDA library that fails to load
        return f"{module} is not importable ({type(exc).__name__}: {exc})"
    if module == "torch" and not mod.cuda.is_available():
        return "PyTorch sees no CUDA device"
    if module == "torch":
        # The baseline must accumulate in fp32 all the way, as every kernel here does: forbid cuBLAS's
        # reduced-precision split-K reductions, which PyTorch allows by default.
        mod.backends.cuda.matmul.allow_fp16_reduced_precision_reduction = False
        mod.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = False
    return None


def _needs(*modules: str) -> Callable[[str, float], str | None]:
    def unavailable(dtype: str, sparsity: float) -> str | None:
        for module in modules:
            reason = module_unavailable(module)
            if reason:
                return reason
        return None

    return unavailable


# ---------------------------------------------------------------------------------------------------- cuBLAS

def _cublas_unavailable(dtype: str, sparsity: float) -> str | None:
    # bf16 runs through torch (the run's native bf16 arrays are torch tensors), fp16 through CuPy.
    return module_unavailable("torch" if dtype == "bf16" else "cupy")


def _cublas_prepare(W: Any) -> Prepared:
    own = W.clone() if array_kind(W) == "torch" else W.copy()

    def bind(X):
        out = empty_rows(X, (X.shape[0], own.shape[0]))
        return lambda: dense_product(X, own, out)

    via = "torch.matmul" if array_kind(W) == "torch" else "cupy.matmul"
    return Prepared(_nbytes(own), bind, note=f"dense W, {via} (cublasGemmEx, fp32 accumulation)")


register(Provider(BASELINE, "cuBLAS (dense)", _cublas_unavailable, _cublas_prepare))


# ----------------------------------------------------------------------------------------- cuSPARSE via CuPy

def _cusparse_cupy_prepare(W: Any) -> Prepared:
    import cupyx.scipy.sparse

    A = cupyx.scipy.sparse.csr_matrix(to_cupy_float32(W))  # dense -> CSR on the device; zeros dropped

    def bind(X):
        xt = to_cupy_float32(X).T  # (K, N) view, column-major: what cuSPARSE SpMM takes without a copy
        return lambda: (A @ xt).T  # (M, N) column-major result; .T is the (N, M) row-major view

    nbytes = int(A.data.nbytes + A.indices.nbytes + A.indptr.nbytes)
    return Prepared(nbytes, bind, act_itemsize=4,
                    note="float32 values and activations (CuPy's CSR takes no fp16/bf16); the output is allocated "
                         "inside each call (no out=)")


register(Provider("cusparse_csr_cupy", "cuSPARSE CSR (CuPy)", _needs("cupy"), _cusparse_cupy_prepare))


# -------------------------------------------------------------------------------------- cuSPARSE via PyTorch

def _cusparse_torch_prepare(W: Any) -> Prepared:
    import torch

    A = as_torch(W).to_sparse_csr()

    def bind(X):
        xk = as_torch(X).T.contiguous()  # (K, N) row-major, made outside the timed region
        return lambda: torch.mm(A, xk).T

    nbytes = _nbytes(A.values()) + _nbytes(A.crow_indices()) + _nbytes(A.col_indices())
    return Prepared(nbytes, bind, note="torch.mm(W_csr, X.T); X.T made contiguous untimed; int64 indices")


register(Provider("cusparse_csr_torch", "cuSPARSE CSR (PyTorch)", _needs("cupy", "torch"), _cusparse_torch_prepare))


# ------------------------------------------------------------------------------------ 2:4 semi-structured

def _prune_2_4(W: Any) -> Any:
    """Keep the two largest |w| of every four consecutive elements along K (a new tensor)."""
    m, k = W.shape
    if k % 4:
        raise ValueError(f"Invalid shape of W: expected K divisible by 4 for 2:4 sparsity, got {tuple(W.shape)}")
    groups = W.reshape(m, k // 4, 4).clone()
    drop = groups.abs().argsort(dim=-1)[..., :2]
    return groups.scatter_(-1, drop, 0).reshape(m, k)


def _sparse24_unavailable(dtype: str, sparsity: float) -> str | None:
    reason = _needs("cupy", "torch")(dtype, sparsity)
    if reason:
        return reason
    if abs(sparsity - 0.5) > 1e-9:
        return "2:4 semi-structured sparsity is 50 % by construction; run only at --sparsity 0.5"
    import torch

    if not hasattr(torch.sparse, "to_sparse_semi_structured"):
        return f"torch {torch.__version__} has no torch.sparse.to_sparse_semi_structured"
    return None


def _sparse24_prepare(W: Any) -> Prepared:
    import torch

    w24 = _prune_2_4(as_torch(W))
    S = torch.sparse.to_sparse_semi_structured(w24)

    def bind(X):
        xt = as_torch(X)
        return lambda: torch.nn.functional.linear(xt, S)

    m, k = w24.shape
    # Half the values plus 2 bits of position per kept value: 4 bits per group of 4, i.e. M*K/8 bytes.
    nbytes = m * k // 2 * w24.element_size() + m * k // 8
    return Prepared(nbytes, bind, weight=w24,
                    note=f"{type(S).__name__}; W re-pruned to 2:4 (the two largest |w| of every 4 along K) and "
                         "checked against cuBLAS on that W")


register(Provider("sparse24_torch", "2:4 semi-structured (PyTorch)", _sparse24_unavailable, _sparse24_prepare))


# ------------------------------------------------------------------------------------------------ flashllm_nb

def _flashllm_unavailable(dtype: str, sparsity: float) -> str | None:
    try:
        import flashllm_nb

        flashllm_nb.TiledCSL, flashllm_nb.linear  # noqa: B018 - the lazy imports raise here if missing
    except Exception as exc:
        return f"flashllm_nb.linear is not importable ({type(exc).__name__}: {exc})"
    return None


def _tiled_csl_prepare(W: Any) -> Prepared:
    import flashllm_nb

    A = flashllm_nb.TiledCSL.from_dense(W)

    def bind(X):
        out = empty_rows(X, (X.shape[0], A.shape[0]))
        return lambda: flashllm_nb.linear(X, A, out=out)

    return Prepared(int(A.nbytes), bind, encoded=A, note="TiledCSL.from_dense(W); linear(X, A, out=Y)")


register(Provider("flashllm_tiled_csl", "flashllm_nb Tiled-CSL", _flashllm_unavailable, _tiled_csl_prepare,
                  simulator=True, ours=True))
