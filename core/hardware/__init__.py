"""Hardware and scale: the accelerator table, this machine measured, the planner, quantization, scaling laws."""
