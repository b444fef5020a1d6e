"""Everything that changes the policy: SFT, the embedded world, evaluation, PPO."""
