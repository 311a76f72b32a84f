"""dr-judge: the checklist judger, pairwise comparison, agreement with labels; also the RL reward."""
