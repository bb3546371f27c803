"""The RL stage: GRPO from the SFT checkpoint with verifiable rewards.

rewards      the eval scorers as TRL reward functions (math, multiple choice, labels, code tests, format)
prompts      RL prompts from training splits and reasoning-gym generators; eval overlap is refused
grpo         RLStageConfig and run_rl (TRL GRPOTrainer, rollout backend choice, resume, final/)
vllm_server  TRL's vLLM server on GPUs of its own, for rollout: vllm_server
weight_sync  colocated vLLM: the trainer's weight updates reach the engine, proven by a probe
learning_signal  whether a finished run had anything to learn from, read off its log history
"""
