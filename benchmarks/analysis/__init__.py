"""The paper's attention analysis on real model attention: capture post-RoPE q/k/v, evaluate
method settings per layer and head (density, mass recall, output recall, relative error) against
dense attention, time them on synthetic inputs; plus the one-prompt method comparison."""
