"""Model families by name. A family is a module satisfying `protocols.Family` (training,
evaluation) and its kind's protocol (`genzoo.kinds`: sampling, the Python API);
`tests/test_protocols.py` checks every family listed here against both.

`model.family` may also name a module of the user's (`mymodels.flow`), imported like any
module (the CLI adds the current folder to the search path, as `python -m` does) and checked
against both protocols when first named: models live in the user's code, not a fork."""

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


_CHECKED: set[str] = set()  # user modules found to conform


def get(name: str) -> ModuleType:
    if name in FAMILIES:
        return importlib.import_module(FAMILIES[name])
    unknown = f"unknown model family {name!r} (known: {', '.join(FAMILIES)}; or a module of yours"
    if not all(part.isidentifier() for part in str(name).split(".")):
        raise UserError(f"{unknown}, by its import path)")
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name is None or not (name == e.name or name.startswith(e.name + ".")):
            raise  # a module the user's family imports is missing: their traceback to read
        raise UserError(
            f"{unknown}: no module {name!r} importable from the current folder or PYTHONPATH)"
        ) from None
    if name not in _CHECKED:
        from genzoo.models.protocols import problems

        if lacks := problems(module):
            where = getattr(module, "__file__", None) or name
            raise UserError(f"model.family {name!r} ({where}) is not a model family: it lacks "
                            f"{'; '.join(lacks)} (see genzoo/models/protocols.py)")  # fmt: skip
        _CHECKED.add(name)
    return module
