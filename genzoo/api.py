"""The Python API, shaped like the CLI: `genzoo.load(workdir)` gives the run's kind's class.

A language model gives `.generate` / `.score`, a translator `.translate`, a masked LM
`.fill_mask` / `.encode`, an image generator `.sample` / `.reconstruct`, a classifier
`.predict` (see `genzoo.kinds`).
"""

from __future__ import annotations

from genzoo.kinds import load
from genzoo.kinds.language_model import LanguageModel

__all__ = ["LanguageModel", "load"]
