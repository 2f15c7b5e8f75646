"""The policy contract, checked on every registered policy (built-in and task policies): a
policy maps features ``(B, F)`` and a step to ``(B,)`` finite hazard logits, one row at a time
(never mixing rows, so adaptive inference may drop finished rows), the same for an int step and
a tensor step, deterministically in eval mode, with gradients reaching its parameters."""

import subprocess
import sys

import pytest
import torch

from stopwise.policies import MLPPolicy, list_policies, policy_example
from stopwise.steps import StepModel, unroll

NAMES = list_policies()


def test_every_tasks_policy_is_listed_in_a_fresh_process():
    """In a new Python, no task imported first (this process's test modules import them all):
    the task policies were missing until their task was imported."""
    listed = subprocess.run(
        [sys.executable, "-c", "import stopwise; print(*stopwise.list_policies())"],
        capture_output=True, text=True, check=True, timeout=120,
    ).stdout.split()  # fmt: skip
    task_policies = {"denoising-cnn", "lista-stop", "parity-halting", "exit-mlp", "maml-set"}
    assert {"mlp", "confidence", "support-loss-stop", *task_policies} <= set(listed) == set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_policy_contract(name):
    torch.manual_seed(0)
    policy, features, T = policy_example(name)
    policy.eval()
    B = features.shape[0]
    with torch.no_grad():
        for t in range(T):
            out = policy(features, t)
            assert out.shape == (B,) and torch.isfinite(out).all(), (name, t)
            torch.testing.assert_close(policy(features, torch.tensor(t)), out)
            torch.testing.assert_close(policy(features, t), out)  # deterministic
            order = torch.randperm(B)
            torch.testing.assert_close(policy(features[order], t), out[order])
            torch.testing.assert_close(policy(features[:2], t), out[:2])  # rows do not mix
    parameters = [p for p in policy.parameters() if p.requires_grad]
    if parameters:
        policy.train()
        policy(features, T - 1).sum().backward()
        unreached = [
            n
            for n, p in policy.named_parameters()
            if p.requires_grad and (p.grad is None or not bool(p.grad.abs().sum() > 0))
        ]
        assert not unreached, (name, unreached)  # every parameter gets a gradient


class StepTagged(StepModel):
    """Features and predictions that say which step they were asked for: ``t`` and ``10 t``
    (plus the state, which counts the steps advanced)."""

    max_steps = 4

    def start(self, x):
        return torch.zeros_like(x)

    def advance(self, state, t):
        return state + 1

    def predict(self, state, t):
        return state + 10 * t

    def features(self, state, t):
        return torch.full_like(state, float(t))


def test_unroll_passes_each_step_its_own_index():
    """Step t (0-based) of unroll is advanced t + 1 times and its prediction and policy
    features are the model's for step t, not a neighbour's."""
    trajectory = unroll(StepTagged(), torch.zeros(2, 3), with_features=True)
    assert trajectory.features.shape == (2, 4, 3)
    for t in range(4):
        assert trajectory.features[:, t].tolist() == [[float(t)] * 3] * 2
        assert trajectory.predictions[:, t].tolist() == [[float(t + 1 + 10 * t)] * 3] * 2


# The denoising policy casts its image features to float32 on purpose (a bfloat16 DnCNN beside
# a float32 policy); every other policy runs in the dtype it is put in.
IN_ITS_DTYPE = [name for name in NAMES if name != "denoising-cnn"]


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("name", IN_ITS_DTYPE)
def test_a_policy_runs_in_the_dtype_it_is_put_in(name, dtype):
    """``policy.to(dtype)`` on features of that dtype: the MLP policies concatenated a float32
    step encoding, so bfloat16 and float16 policies failed with 'mat1 and mat2 must have the
    same dtype'."""
    torch.manual_seed(0)
    policy, features, T = policy_example(name)
    policy.eval()
    with torch.no_grad():
        for t in range(T):
            expected = policy(features, t)
            out = policy.to(dtype)(features.to(dtype), t)
            policy.float()
            assert out.dtype == dtype and out.shape == expected.shape, (name, t)
            torch.testing.assert_close(out.float(), expected, atol=0.1, rtol=0.05)


def test_a_sinusoidal_mlp_policy_runs_in_bfloat16():
    torch.manual_seed(0)
    policy = MLPPolicy(3, 5, hidden=(8,), encoding="sinusoidal").eval()
    features = torch.randn(4, 3)
    with torch.no_grad():
        expected = policy(features, 2)
        out = policy.to(torch.bfloat16)(features.to(torch.bfloat16), 2)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), expected, atol=0.1, rtol=0.05)
