"""genzoo: a JAX/Flax zoo of generative models with one trainer for every family.

import genzoo
lm = genzoo.load("runs/demo")
lm.generate(["ROMEO:", "JULIET:"], max_new_tokens=50, temperature=0.8)
lm.score(["To be, or not to be"])     # total log-likelihood, nats
"""

__version__ = "0.1.0"


def load(workdir):
    """A trained language-model run (see `genzoo.api.LanguageModel`)."""
    from genzoo.api import load as _load  # jax is imported only when needed

    return _load(workdir)
