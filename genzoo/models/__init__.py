"""Model families by name. A family is a module exposing the protocol below.

Required:
    init(rng, cfg) -> params                       (boxed with logical axis names)
    loss(params, batch, rng, cfg, *, train, step) -> (loss, metrics)
        `loss` is a scalar, or a dict {group: scalar} when the parameters are a dict of
        groups each trained on its own objective (a GAN's generator and discriminator):
        the trainer differentiates each group's loss with respect to that group only.
    eval_sums(params, batch, rng, cfg) -> dict of arrays that add up across batches
    eval_summary(totals, meta) -> dict of whole-split figures
Optional:
    flops_per_example(cfg, seq_len) -> float       (enables MFU reporting)
    sample(params, rng, cfg, **kwargs)             (what `genzoo sample` calls)
    KIND: str                                      (how the CLI renders samples)
        "language_model": sample(params, rng, cfg, *, prompt_BxP, max_new_tokens, temperature,
                                 top_k, top_p) -> new tokens [B, N]; context_length(cfg)
        "image_generator": sample(params, rng, cfg, *, num) -> images [N, H, W, C] in [0, 1];
                           optionally reconstruct(params, images, cfg)
"""

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
}


def get(name: str) -> ModuleType:
    if name not in FAMILIES:
        raise UserError(f"unknown model family {name!r} (known: {', '.join(FAMILIES)})")
    return importlib.import_module(FAMILIES[name])
