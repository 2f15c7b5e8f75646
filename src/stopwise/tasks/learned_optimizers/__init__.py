"""Learned optimizers that learn when to stop: the LSTM optimizer of Andrychowicz et al. (2016),
the ACT optimizer of Sander (2017) (the same LSTM emitting a stop posterior, trained on the
random-horizon bound) and L2S-stop on top of the LSTM optimizer, against hand-designed optimizers
with hand-designed stop rules, on generated function families. See docs/learned_optimizers.md.

The public API, for meta-training a learned optimizer on your own family of functions::

    from stopwise.tasks.learned_optimizers import LSTMOptimizerNet, LearnedOptimizer, meta_train

    net = LSTMOptimizerNet()                                  # coordinatewise 2-layer LSTM
    meta_train(net, my_family, iterations=200, horizon=100)   # a FunctionFamily
    optimizer = LearnedOptimizer(model.parameters(), net)     # a torch.optim.Optimizer

A family is any object with ``dim``, ``sample(n, generator)``, ``initial(functions)`` and
``loss(theta (n, D), functions, step) -> (n,)`` (:class:`FunctionFamily`).
"""

from __future__ import annotations

from ...contract import Experiment
from .config import PRESETS, LearnedOptimizersConfig
from .data import FunctionFamily, MLPFamily, QuadraticFamily, RegressionFamily, load_images
from .experiment import jobs, run_job, stop_models
from .methods import (
    loss_curves,
    meta_train,
    meta_train_act,
    meta_train_restarts,
    tune_learning_rates,
)
from .models import (
    HandDesigned,
    LearnedOptimizer,
    LSTMOptimizerNet,
    OptimizerRun,
    StackedLSTMOptimizers,
    log_and_sign,
    loss_and_gradient,
)
from .report import report

__all__ = [
    "FunctionFamily",
    "RegressionFamily",
    "QuadraticFamily",
    "MLPFamily",
    "load_images",
    "LSTMOptimizerNet",
    "LearnedOptimizer",
    "StackedLSTMOptimizers",
    "HandDesigned",
    "OptimizerRun",
    "log_and_sign",
    "loss_and_gradient",
    "meta_train",
    "meta_train_act",
    "meta_train_restarts",
    "loss_curves",
    "tune_learning_rates",
    "LearnedOptimizersConfig",
    "EXPERIMENTS",
]

EXPERIMENTS = [
    Experiment(
        name="learned-optimizers",
        description="LSTM optimizer, ACT optimizer and L2S-stop vs tuned hand-designed "
        "optimizers and stop rules on generated function families.",
        config=LearnedOptimizersConfig,
        presets=PRESETS,
        default_preset="quick",
        devices=("cpu",),  # its jobs do not move models or data to `device`
        jobs=jobs,
        run_job=run_job,
        report=report,
        stop_models=stop_models,
    )
]
