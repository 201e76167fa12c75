"""An exponential moving average (EMA) of a model's weights: the copy to sample from.

The weights of a network trained with a small batch wander around a good solution from one step to
the next; their running average sits closer to its centre and samples better (Ho et al. 2020 keep
one with decay 0.9999). Every trainer in ddpm_lib keeps one with the functions below.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def ema_decay(step: int, decay: float) -> float:
    """The decay used at optimisation step ``step`` (0, 1, ...): ``min(decay, (1 + step) / (10 + step))``.

    A warm-up: at first the average follows the trained weights closely instead of remembering the
    random initial ones for thousands of steps. The rule is TensorFlow's
    ``tf.train.ExponentialMovingAverage(decay, num_updates=step)``.
    """
    if not 0.0 <= decay < 1.0:
        raise ValueError(f"the EMA decay must lie in [0, 1), got {decay}")
    return min(decay, (1 + step) / (10 + step))


def make_ema(model: nn.Module) -> nn.Module:
    """A frozen copy of ``model`` to hold the average: eval mode, no gradients."""
    return copy.deepcopy(model).eval().requires_grad_(False)


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, step: int, decay: float) -> None:
    """ema <- d * ema + (1 - d) * model for every parameter at once, with d = :func:`ema_decay`.

    Buffers (batch-norm running statistics, for example) are copied rather than averaged: they
    are statistics of the current weights, not weights.
    """
    d = ema_decay(step, decay)
    torch._foreach_lerp_(list(ema.parameters()), list(model.parameters()), 1.0 - d)
    for e, m in zip(ema.buffers(), model.buffers()):
        e.copy_(m)
