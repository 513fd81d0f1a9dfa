"""Triton kernels, one file per op, each with its launcher. Ships as `fasttda.kernels`.

Imported only by the dispatcher when the Triton backend is chosen, never at
``import fasttda`` time. Launchers take already-checked arguments from `fasttda.ops`.
"""
