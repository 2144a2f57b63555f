"""Oracles, plain classes with one protocol (:mod:`sppo_pl.rewards.oracle`): scores, then K x K preferences,
then P_hat. ``math`` (verifier), ``classifier`` (reward model), ``pairwise`` (PairRM-style model),
``function`` (a user's function), ``combined`` (a weighted mix); ``preference`` holds the pure math."""
