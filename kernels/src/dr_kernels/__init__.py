"""dr_kernels: fused ops for long-context training and inference, each with a PyTorch reference.

Public API: `linear_cross_entropy` and `label_logprobs` (the loss and RL's log-probabilities without the
logits), `packed_attention` (documents packed in a row attend only to themselves), and `patch`/`unpatch`
(swap them into a Hugging Face model). `dr_kernels.reference` holds the plain PyTorch definitions.
"""

from dr_kernels.attention import packed_attention
from dr_kernels.ops.linear_ce import label_logprobs, linear_cross_entropy
from dr_kernels.patch import patch, unpatch

__all__ = ["label_logprobs", "linear_cross_entropy", "packed_attention", "patch", "unpatch"]
