"""Vector fields: ``nn.Module``s with ``forward(t, x)`` returning ``dx/dt``.

:class:`MLPField` and :class:`ConvField` (time-conditioned by concatenation or FiLM),
the parabolic :class:`ParabolicConvField` / :class:`ParabolicMLPField` (a one-sided
Lipschitz bound that keeps backward Euler well posed whatever the weights), and
:class:`LayerwiseField` (one block per time interval: an untied ResNet; piecewise constant in
time, or with ``interpolation="linear"`` continuous, and ``init="tied"/"smooth"`` for weights
that are a smooth function of depth).
"""

from ._parabolic import MONOTONE_ACTIVATIONS, ParabolicConvField, ParabolicMLPField
from ._layerwise import INTERPOLATIONS, LAYER_INITS, LayerwiseField
from ._standard import ACTIVATIONS, TIME_MODES, ConvField, MLPField, spectral_normalize

__all__ = ["MLPField", "ConvField", "ParabolicConvField", "ParabolicMLPField", "LayerwiseField",
           "spectral_normalize", "ACTIVATIONS", "TIME_MODES", "MONOTONE_ACTIVATIONS", "INTERPOLATIONS",
           "LAYER_INITS"]
