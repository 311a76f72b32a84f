"""RL's components; the recipe that puts them together, and the loop, is `dr_train/recipes/rl.py`.

- `rollouts.py`: a step's tasks, the agent's rewarded runs of them, gathered over the ranks; the update's
  sequences (`Rollouts`, `Rollout`, `Sequence`).
- `update.py`: the policy's update through the `TrainBackend` (`PolicyUpdate`: starting log-probabilities,
  advantages, minibatches).
- `algorithms.py`: GRPO and PPO as objects with `advantages()` and `loss()`, over the pure `math.py`.
- `sampling.py`: where the policy samples, in this process or in vLLM engines, and the engines' weight sync
  with its probe (`Sampler`).
- `engines.py` (`VLLMServers`, `EnginePolicy`), `policy.py` (`LocalPolicy`, the recorded turns),
  `stream.py` (asynchronous rollouts), `weight_sync.py` (NCCL), `rewards.py` (`Rewarder`).
"""
