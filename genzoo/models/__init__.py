"""Model families by name. A family is a module satisfying `protocols.Family` (training,
evaluation) and its kind's protocol (`genzoo.kinds`: sampling, the Python API);
`tests/test_protocols.py` checks every family listed here against both."""

from __future__ import annotations

import importlib
from types import ModuleType

from genzoo.errors import UserError

FAMILIES = {
    "gpt": "genzoo.models.gpt",
    "vae": "genzoo.models.vae",
    "gan": "genzoo.models.gan",
    "hmm": "genzoo.models.hmm",
    "classifier": "genzoo.models.classifier",
    "transformer": "genzoo.models.transformer",
    "bert": "genzoo.models.bert",
    "dvae": "genzoo.models.dvae",
    "clip": "genzoo.models.clip",
    "judge": "genzoo.models.judge",
    "dalle": "genzoo.models.dalle",
}


def get(name: str) -> ModuleType:
    if name not in FAMILIES:
        raise UserError(f"unknown model family {name!r} (known: {', '.join(FAMILIES)})")
    return importlib.import_module(FAMILIES[name])
