"""Model arithmetic (parameters, FLOPs, memory) and the scaling-law lab: sweep, fits, report."""
