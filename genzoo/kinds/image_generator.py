"""Image generators (VAE, GAN): sample image grids; reconstruct where the family can."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

import jax
import numpy as np

from genzoo import kinds, models
from genzoo.errors import UserError
from genzoo.kinds import Kind, Option, check_sampling, images_for, in_batches, register
from genzoo.sampling import row_keys


@runtime_checkable
class ImageGeneratorFamily(Protocol):
    def sample(self, params, keys_N, cfg):
        """Images [N, H, W, C] in [0, 1]: image i drawn from `keys_N[i]` alone."""


class ImageGenerator:
    def __init__(self, run):
        self.run, self.family = run, models.get(run.cfg.model.family)

    def sample(self, num: int = 64, seed: int = 0, batch_size: int = 256) -> np.ndarray:
        """`num` images [N, H, W, C] in [0, 1], at most `batch_size` at a time (100,000 at
        once was a std::bad_alloc abort), in `even_batches`: one program compiles. Image j's
        noise comes from its own key, so the images are the same for any `batch_size` (FID
        and the sample grids do not move with it) and a larger `num` extends a smaller one."""
        check_sampling(dict(num=num, seed=seed, batch_size=batch_size))
        rng = jax.random.PRNGKey(seed)
        batches = [
            np.asarray(self.family.sample(self.run.params, row_keys(rng, len(index), int(index[0])),
                                          self.run.cfg.model))
            for index in kinds.even_batches(num, batch_size)
        ]  # fmt: skip
        return np.concatenate(batches)[:num]

    def reconstruct(self, images_BxHxWxC, batch_size: int = 256) -> np.ndarray:
        if not hasattr(self.family, "reconstruct"):
            raise UserError(f"family {self.run.cfg.model.family!r} cannot reconstruct")
        reconstruct = lambda x: self.family.reconstruct(self.run.params, x, self.run.cfg.model)  # noqa: E731
        return in_batches(reconstruct, images_for(self.run, images_BxHxWxC), batch_size)


def out_path(args, name: str) -> Path:
    out = Path(args.out) if args.out else Path(args.workdir) / name
    if out.is_dir() or out.suffix.lower() != ".png":  # the grid is always written as PNG
        raise UserError(f"--out {out}: give a file name ending in .png")
    if not out.parent.is_dir():
        raise UserError(f"folder {out.parent} does not exist")
    return out


def reconstruction_grid(run, reconstruct, args) -> None:
    """Writes `--num` evaluation images (drawn with `--seed`) beside their reconstructions."""
    from genzoo import metrics

    out = out_path(args, "reconstructions.png")
    num, split = args.num or 64, run.cfg.eval.split
    real = run.data.real_images(split, len(run.data.splits[split][0]))
    real = real[np.random.default_rng(args.seed).choice(len(real), min(num, len(real)), False)]
    recon = np.asarray(reconstruct(real))
    images = np.stack([real, recon], axis=1).reshape(-1, *real.shape[1:])  # pairs side by side
    metrics.save_image_grid(images, out, columns=2 * max(1, int(np.sqrt(len(real)))))
    print(out)


def _sample(gen: ImageGenerator, args) -> None:
    from genzoo import metrics

    if args.reconstruct:
        return reconstruction_grid(gen.run, gen.reconstruct, args)
    out = out_path(args, "samples.png")
    metrics.save_image_grid(gen.sample(args.num or 64, args.seed), out)
    print(out)


OUT = Option("--out", None, dict(help="PNG path (default: WORKDIR/samples.png)"))

register(
    Kind(
        "image_generator",
        ImageGeneratorFamily,
        ImageGenerator,
        options=(
            OUT,
            Option("--reconstruct", False, dict(action="store_true", help="inputs beside outputs")),
        ),
        sample=_sample,
    )
)
