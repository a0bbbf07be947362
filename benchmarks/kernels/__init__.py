"""Kernel benchmarks on synthetic q/k/v (no model): AnchorAttention stage by stage against dense
SDPA and the fp32 emulation of the authors' algorithm, and launch-configuration tuning (GPU)."""
