"""Reports built from result files only (no model, no GPU): per-run benchmark tables and NIAH
heatmaps (``runs``), and the AnchorAttention paper's figures and tables (``figures``)."""
