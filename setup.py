"""Build script: packs the three source rooms into one `fasttda` package for wheels and sdists.

`python/fasttda` is the package, `kernels/` ships as `fasttda.kernels` (Triton), and
`csrc/` ships as `fasttda.csrc` (CUDA/C++ sources, compiled just in time on first use,
so a CPU-only install never needs nvcc; see `fasttda/_extension.py`). From a source tree
(editable install, PYTHONPATH=python) `fasttda/__init__.py` resolves the same names.
"""
from setuptools import find_packages, setup

packages = find_packages("python") + ["fasttda.kernels", "fasttda.csrc", "fasttda.csrc.cpu"]
package_dir = {"": "python", "fasttda.kernels": "kernels", "fasttda.csrc": "csrc", "fasttda.csrc.cpu": "csrc/cpu"}

setup(packages=packages, package_dir=package_dir)
