"""Package discovery for setuptools (everything else is in pyproject.toml): every `marco_gguf` subpackage is
found, and the top-level `quant_presets/` folder is shipped as `marco_gguf.quant_presets` (pyproject's
`packages.find` cannot add a package from outside the tree it searches, so that one is named here)."""

from setuptools import find_packages, setup

setup(packages=[*find_packages(include=["marco_gguf", "marco_gguf.*"]), "marco_gguf.quant_presets"])
