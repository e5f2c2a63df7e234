"""The demo's summary draws the reward per step on a fixed 0-1 scale, so learning (or none) is visible."""

from __future__ import annotations

from localcluster.demo import sparkline


def test_reward_curve_uses_a_fixed_scale_so_a_flat_zero_curve_stays_flat() -> None:
    assert sparkline([0.0, 0.0, 0.0]) == "▁▁▁"
    assert sparkline([0.0, 0.5, 1.0]) == "▁▅█"
    assert sparkline([0.385, 0.6, 0.826]) == "▄▅▇"
    assert sparkline([-1.0, 2.0]) == "▁█"  # outside the scale: clamped, never an error
