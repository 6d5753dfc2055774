"""Every family conforms to the training protocol and to its kind's protocol."""

import inspect

import pytest

from genzoo import kinds, models
from genzoo.models.protocols import Family


@pytest.mark.parametrize("name", sorted(models.FAMILIES))
def test_family_conforms_to_its_protocols(name):
    family = models.get(name)
    assert isinstance(family, Family), f"{name} lacks part of the Family protocol"
    kind = kinds.of_family(family)
    assert isinstance(family, kind.protocol), f"{name} lacks part of {kind.protocol.__name__}"
    for proto in (Family, kind.protocol):
        for member, spec in vars(proto).items():
            if member.startswith("_") or not callable(spec):
                continue
            want = list(inspect.signature(spec).parameters)[1:]  # without `self`
            have = list(inspect.signature(getattr(family, member)).parameters)
            required = [
                p
                for p in want
                if inspect.signature(spec).parameters[p].default is inspect.Parameter.empty
            ]
            assert all(p in have for p in required), f"{name}.{member}{have} vs {want}"


def test_every_kind_has_an_api_and_families():
    used = {models.get(n).KIND for n in models.FAMILIES}
    assert used <= set(kinds.all_kinds())
    assert {"language_model", "translator", "masked_lm", "image_generator"} <= used
