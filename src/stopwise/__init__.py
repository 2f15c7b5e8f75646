"""stopwise: models that learn when to stop computing, per input.

The public contract (see DESIGN.md): :class:`StopTime`, :func:`oracle`, :mod:`stopwise.objectives`,
:func:`run_adaptive`, :func:`calibrate`, and the ``stopwise`` command.
"""

__version__ = "0.1.0"

from . import objectives  # noqa: E402
from .inference import (  # noqa: E402
    AdaptiveResult,
    CumulativeThreshold,
    HazardThreshold,
    SampleRule,
    calibrate,
    fit_exit_thresholds,
    fit_threshold,
    run_adaptive,
)
from .policies import create_policy, list_policies  # noqa: E402
from .steps import StepModel, Trajectory, unroll  # noqa: E402
from .stoptime import StopTime, oracle  # noqa: E402

__all__ = [
    "__version__",
    "objectives",
    "StopTime",
    "oracle",
    "StepModel",
    "Trajectory",
    "unroll",
    "run_adaptive",
    "AdaptiveResult",
    "HazardThreshold",
    "CumulativeThreshold",
    "SampleRule",
    "calibrate",
    "fit_threshold",
    "fit_exit_thresholds",
    "create_policy",
    "list_policies",
]
