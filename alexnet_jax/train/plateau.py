"""The plateau schedule's step in the loop: each validation error fed to it,
the learning rate dropped when the error has stopped improving."""

from __future__ import annotations

import logging

import jax
import ml_collections

from alexnet_jax.train import optim, steps


def plateau_step(state: steps.TrainState, error: float, opt: ml_collections.ConfigDict, replicated) -> steps.TrainState:
    """Feeds one validation error to the plateau schedule; drops the rate if due."""
    plateau, drop = optim.plateau_update(
        state.plateau, error, patience=opt.plateau_patience, max_drops=opt.plateau_max_drops
    )
    opt_state = state.opt_state
    if drop:
        new_rate = float(optim.current_learning_rate(opt_state)) * opt.drop_factor
        logging.info("Validation error has not improved: learning rate -> %g", new_rate)
        opt_state = optim.with_learning_rate(opt_state, new_rate)
    return state.replace(plateau=jax.device_put(plateau, replicated), opt_state=opt_state)
