"""genzoo: a JAX/Flax zoo of generative models with one trainer for every family.

import genzoo
lm = genzoo.load("runs/demo")
lm.generate(["ROMEO:", "JULIET:"], max_new_tokens=50, temperature=0.8)
lm.score(["To be, or not to be"])     # total log-likelihood, nats
"""

from genzoo.host_memory import one_arena

__version__ = "0.1.0"

one_arena()  # before XLA's threads first allocate: see genzoo/host_memory.py


def load(workdir, checkpoint="latest"):
    """A trained run as its kind's API object (a language model's `.generate`, a translator's
    `.translate`, ...; see `genzoo.kinds`)."""
    from genzoo.api import load as _load  # jax is imported only when needed

    return _load(workdir, checkpoint)
