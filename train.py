"""Fine-tune AffectVerse: ``python train.py [ARGS]`` runs the same code as ``affectverse train [ARGS]``.

Without arguments it trains the embedded default (a tiny random AffectVerse on generated clips); ``--help`` lists
every option. The training code is :mod:`affectverse.training.run`; an error ends as one line (the traceback with
``affectverse --log-level DEBUG train ARGS``).
"""

import sys

from affectverse.cli import run_job
from affectverse.training.run import main

if __name__ == "__main__":
    sys.exit(run_job(main, sys.argv[1:]))
