"""megatron-r1: the DeepSeek-R1 recipe (GRPO + verifiable rewards) on Megatron-Core."""

__version__ = "0.1.0"
