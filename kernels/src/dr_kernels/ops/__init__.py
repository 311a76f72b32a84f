"""The fused ops and their autograd functions; each dispatches to Triton where it can run."""
