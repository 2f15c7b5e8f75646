"""The policy contract, checked on every registered policy (built-in and task policies): a
policy maps features ``(B, F)`` and a step to ``(B,)`` finite hazard logits, one row at a time
(never mixing rows, so adaptive inference may drop finished rows), the same for an int step and
a tensor step, deterministically in eval mode, with gradients reaching its parameters."""

import pytest
import torch

from stopwise.experiments import load_tasks
from stopwise.policies import list_policies, policy_example

load_tasks()  # task policies register when their task is imported
NAMES = list_policies()


def test_tasks_register_their_policies():
    assert {"mlp", "confidence"} <= set(NAMES)


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
        assert any(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in parameters)
