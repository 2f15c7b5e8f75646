"""stopwise: models that learn when to stop computing, per input.

The public contract (README.md, "The API in one example"): :class:`StopTime`, :func:`oracle`, :mod:`stopwise.objectives`,
:func:`run_adaptive`, :func:`calibrate`, the training stages (``fit_*``), the batch sources, the
task contract (:mod:`stopwise.experiments`, :mod:`stopwise.config`) and the ``stopwise`` command.
"""

__version__ = "0.2.0"

from . import config, contract, curves, experiments, objectives, perf, selection, stats  # noqa: E402
from .inference import (  # noqa: E402
    AdaptiveResult,
    CumulativeThreshold,
    HazardThreshold,
    MixedRule,
    SampleRule,
    ScoreThreshold,
    calibrate,
    fit_exit_thresholds,
    fit_threshold,
    in_chunks,
    run_adaptive,
    run_fixed,
)
from .policies import create_policy, list_policies, register_policy  # noqa: E402
from .steps import StepModel, Trajectory, unroll  # noqa: E402
from .stoptime import StopTime, oracle  # noqa: E402
from .trained import load_stop_model  # noqa: E402
from .training import (  # noqa: E402
    EpochBatches,
    GeneratedBatches,
    LoopSettings,
    ValidationSchedule,
    fit_gain_head,
    fit_gain_policy,
    fit_joint,
    fit_oracle,
    fit_policy,
    fit_predictor,
    optimize,
    train_loop,
)

__all__ = [
    "load_stop_model",
    "__version__",
    "objectives",
    "config",
    "contract",
    "experiments",
    "selection",
    "curves",
    "stats",
    "perf",
    "StopTime",
    "oracle",
    "StepModel",
    "Trajectory",
    "unroll",
    "run_adaptive",
    "run_fixed",
    "in_chunks",
    "AdaptiveResult",
    "ScoreThreshold",
    "HazardThreshold",
    "CumulativeThreshold",
    "MixedRule",
    "SampleRule",
    "calibrate",
    "fit_threshold",
    "fit_exit_thresholds",
    "create_policy",
    "list_policies",
    "register_policy",
    "EpochBatches",
    "GeneratedBatches",
    "LoopSettings",
    "ValidationSchedule",
    "train_loop",
    "optimize",
    "fit_predictor",
    "fit_oracle",
    "fit_policy",
    "fit_gain_policy",
    "fit_gain_head",
    "fit_joint",
]
