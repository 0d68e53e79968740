"""Development tools: kernel A/B and timing, profiling, device runs.

Run from the repository root, e.g. ``python -m dev.kernel_ab``; nothing here is part of the installed library.
"""
