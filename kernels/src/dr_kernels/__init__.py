"""dr_kernels: fused Triton ops for long-context training and inference, each with a PyTorch reference."""
