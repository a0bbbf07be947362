"""Running one prefill method on one benchmark: the generation runner (RULER, LongBench, NIAH),
the attention smoke runner, and the resumable result files every run writes."""
