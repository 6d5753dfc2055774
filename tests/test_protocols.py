"""Every family conforms to the training protocol and to its kind's protocol."""

import pytest

from genzoo import kinds, models
from genzoo.models.protocols import Family, problems


@pytest.mark.parametrize("name", sorted(models.FAMILIES))
def test_family_conforms_to_its_protocols(name):
    family = models.get(name)
    assert isinstance(family, Family), f"{name} lacks part of the Family protocol"
    assert isinstance(family, kinds.of_family(family).protocol), name
    assert problems(family) == []  # every member there, each taking the protocol's parameters


def test_every_kind_has_an_api_and_families():
    used = {models.get(n).KIND for n in models.FAMILIES}
    assert used <= set(kinds.all_kinds())
    assert {"language_model", "translator", "masked_lm", "image_generator"} <= used
