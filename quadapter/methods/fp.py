"""Full precision: the model as loaded, the reference row of every comparison."""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

if TYPE_CHECKING:
    from quadapter.methods import RunContext


def apply(ctx: RunContext) -> nn.Module:
    return ctx.model
