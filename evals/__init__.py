"""Evaluation: math, code and medical benchmarks with exact scoring.

kinds     one object per answer kind (math, choice, label, code): batch scores for the eval, values for the RL rewards
scoring   what counts as correct: the answer extraction and equivalence each kind scores with, and the code programs
math_grader  math answers as the Qwen2.5-Math harness reads and compares them (the paper's protocol)
verify    math answers as math-verify reads them (TRL's accuracy_reward): the math_verify reward and metric
bounded   scoring bounded in wall time on any thread: warm worker processes killed at the limit
score_worker  the worker process `bounded` starts (python -m evals.score_worker)
tasks     the benchmarks: where their data comes from, their prompts, their answer kinds
generate  generation backends with one interface: vLLM and Hugging Face `generate`
metrics   Avg@k and the unbiased Pass@k estimator, and `pick` to find one whatever its n
entropy   the mean token entropy of sampled completions (one teacher-forced pass)
stage     the eval stage: generate, score, write samples.jsonl and metrics.json per task
"""
