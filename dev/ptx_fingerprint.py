"""Fingerprint the machine code of every SpMM kernel configuration the PTX tests compile, to show that a change of
the kernel's source leaves its code alone (a refactor), or exactly which configurations it changes.

Each configuration is compiled to PTX without a GPU and assembled by ``ptxas``; the fingerprint is the hash of the
cubin's ``.text`` sections (the SASS instructions), so two commits that give equal fingerprints run the same
instructions and so at the same speed. Where ptxas is missing it falls back to the PTX, normalized: comments and
Numba's per-function environment declarations dropped, mangled names and virtual registers renamed in order of
appearance (their numbers are NVVM's bookkeeping).

Use (no GPU needed; ``tests/`` holds the compile worker and the list of configurations)::

    PYTHONPATH=tests python -m dev.ptx_fingerprint --out before.json          # on the old commit
    PYTHONPATH=tests python -m dev.ptx_fingerprint --out after.json --compare before.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import struct
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ptx_compile_worker import compile_ptx_in_subprocess, find_ptxas
from test_spmm_ptx import CCS, CONFIGS, DEPENDENT_CC, DEPENDENT_CONFIGS, WGMMA_CC, WGMMA_CONFIGS, _id

_MANGLED = re.compile(r"_Z[A-Za-z0-9_$]+")
_REGISTER = re.compile(r"%(r|rd|f|fd|p|rs|h|hh)(\d+)\b")
_REGISTER_COUNT = re.compile(r"(\.reg \.\w+\s+%\w+)<\d+>")


def normalized(ptx: str) -> str:
    """``ptx`` without comments or environment declarations, names and virtual registers renamed in order."""
    names: dict[str, str] = {}
    registers: dict[str, str] = {}
    lines = []
    for line in ptx.splitlines():
        line = line.split("//", 1)[0].rstrip()
        if not line or (line.startswith(".common .global") and "NumbaEnv" in line):
            continue
        line = _MANGLED.sub(lambda m: names.setdefault(m.group(0), f"F{len(names)}"), line)
        line = _REGISTER_COUNT.sub(r"\1", line)
        lines.append(_REGISTER.sub(lambda m: registers.setdefault(m.group(0), f"%{m.group(1)}_{len(registers)}"),
                                   line))
    return "\n".join(lines)


def sass_sections(ptxas: str, ptx: str, cc: tuple) -> bytes:
    """The ``.text.*`` sections of the cubin ptxas makes of ``ptx``, concatenated in section order."""
    arch = f"sm_{cc[0]}{cc[1]}{cc[2] if len(cc) > 2 else ''}"
    with tempfile.TemporaryDirectory(prefix="flashllm_fingerprint_") as tmp:
        source, cubin = Path(tmp, "kernel.ptx"), Path(tmp, "kernel.cubin")
        source.write_text(ptx)
        subprocess.run([ptxas, f"-arch={arch}", str(source), "-o", str(cubin)], check=True, capture_output=True)
        elf = cubin.read_bytes()
    # ELF64: section headers at e_shoff (0x28), e_shentsize / e_shnum / e_shstrndx at 0x3A.
    (shoff,) = struct.unpack_from("<Q", elf, 0x28)
    entry_size, count, names_index = struct.unpack_from("<HHH", elf, 0x3A)
    headers = [struct.unpack_from("<IIQQQQIIQQ", elf, shoff + i * entry_size) for i in range(count)]
    names_offset = headers[names_index][4]

    def name(offset: int) -> bytes:
        start = names_offset + offset
        return elf[start:elf.index(b"\0", start)]

    return b"".join(elf[h[4]:h[4] + h[5]] for h in headers if name(h[0]).startswith(b".text."))


def fingerprints() -> tuple[dict[str, str], str]:
    """({configuration id: sha256}, what was hashed) for every configuration and target."""
    results = compile_ptx_in_subprocess("spmm_ptx_factory", "spmm_kernel", CONFIGS, CCS, assemble=False)
    results += compile_ptx_in_subprocess("spmm_ptx_factory", "spmm_kernel", DEPENDENT_CONFIGS, [DEPENDENT_CC],
                                         assemble=False)
    results += compile_ptx_in_subprocess("spmm_ptx_factory", "spmm_kernel", WGMMA_CONFIGS, [WGMMA_CC],
                                         assemble=False)
    for r in results:
        if r.error is not None:
            raise SystemExit(f"{_id(r.config, r.cc)} did not compile:\n{r.error}")
    ptxas, reason = find_ptxas()
    if ptxas is None:
        print(f"hashing normalized PTX: {reason}")
        digest = {_id(r.config, r.cc): hashlib.sha256(normalized(r.ptx).encode()).hexdigest() for r in results}
        return digest, "ptx"
    with ThreadPoolExecutor() as pool:
        codes = list(pool.map(lambda r: sass_sections(ptxas, r.ptx, r.cc), results))
    return {_id(r.config, r.cc): hashlib.sha256(code).hexdigest() for r, code in zip(results, codes)}, "sass"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="where to write the fingerprints (JSON)")
    parser.add_argument("--compare", help="fingerprints of another commit: report every configuration that differs")
    args = parser.parse_args()
    started = time.perf_counter()
    table, kind = fingerprints()
    with open(args.out, "w") as f:
        json.dump({"hashed": kind, "configurations": table}, f, indent=1, sort_keys=True)
    print(f"{len(table)} configurations fingerprinted ({kind}) in {time.perf_counter() - started:.0f} s -> {args.out}")
    if not args.compare:
        return 0
    with open(args.compare) as f:
        other = json.load(f)
    if other["hashed"] != kind:
        raise SystemExit(f"--compare {args.compare} hashed {other['hashed']}, this run {kind}: not comparable")
    theirs = other["configurations"]
    differ = sorted(k for k in table.keys() | theirs.keys() if table.get(k) != theirs.get(k))
    for key in differ:
        print(f"differs: {key}")
    print(f"{len(table) - len(differ)} of {len(table)} identical")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
